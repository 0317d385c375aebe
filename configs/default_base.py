"""The config schema and the values every dataset's defaults share.

Sections (DESIGN.md, STYLE.md): `sde` (name + that SDE's own arguments), `training`, `sampling`,
`eval`, `data`, `model`, `optim`, plus `seed`. Field names follow the paper's released configs;
where ours differ (the SDE's arguments live in `config.sde`, not `config.model`), configs/README.md
maps them. Values are those of the paper's image experiments (Song et al. 2021) where most of them
agree; each `default_<dataset>_configs.py` states only what differs for its dataset.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

# The smallest time the samplers reach (the original hard-coded these next to the SDE choice).
SAMPLING_EPS = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}


def get_default_configs(sde: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The shared schema and values, with `config.sde = sde` and empty `data` and `model` sections.

  Args:
    sde: `name` (a registered SDE, sde_lib.SDES) and that SDE's constructor arguments.
  """
  config = ml_collections.ConfigDict()
  config.sde = ml_collections.ConfigDict(dict(sde))

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1_300_001
  training.snapshot_freq = 50_000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 10_000  # extra checkpoints for pre-emptible machines
  training.snapshot_sampling = True  # sample a grid at each snapshot
  # losses.OBJECTIVES: dsm (continuous SDE), smld, ddpm, dsm_single, ssm, ssm_vr, ism, esm.
  training.objective = "dsm"
  training.continuous = True
  training.reduce_mean = False
  training.likelihood_weighting = False
  training.importance_sampling = False
  training.eps = 1e-5  # smallest time drawn by the continuous objectives
  training.n_jitted_steps = 5

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"  # pc | ode
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.eps = SAMPLING_EPS[sde["name"]]
  sampling.ode_solver = "dopri5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = True
  evaluate.num_samples = 50_000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.bpd_num_repeats = 1
  # eval_lib.py: "auto" picks the digits metric for DIGITS, FID / KID / IS for other images, none
  # for vector data. inception_path: the FID Inception weights (evaluation.INCEPTION_FILENAME from
  # evaluation.INCEPTION_URL), needed only for FID / KID / IS. cache_dir: of the dataset statistics
  # and the digits classifier (None: $SCORESDE_CACHE or ~/.cache/scoresde_jax). stats_path: a
  # statistics file to use (None: computed once into cache_dir). Unset strings are placeholders, so
  # that --config.eval.inception_path=... works on the command line.
  evaluate.metric = "auto"
  evaluate.inception_path = placeholder(str)
  evaluate.cache_dir = placeholder(str)
  evaluate.stats_path = placeholder(str)
  evaluate.hutchinson_type = "rademacher"  # bits/dim divergence estimator

  config.data = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.seed = 42
  return config


def get_image_configs(
  sde: str,
  sde_defaults: Mapping[str, Mapping[str, Any]],
  *,
  dataset: str,
  image_size: int,
) -> ml_collections.ConfigDict:
  """The shared defaults for an RGB image dataset, with `config.sde` from `sde_defaults[sde]`.

  Args:
    sde: "vesde", "vpsde" or "subvpsde" (the original's `config.training.sde`).
    sde_defaults: each SDE's arguments on this dataset.
    dataset: `config.data.dataset` (datasets.py).
    image_size: the side of the square images.

  Raises:
    ValueError: if `sde_defaults` has no entry for `sde`.
  """
  if sde not in sde_defaults:
    raise ValueError(
      f"config.sde.name = {sde!r}: {dataset} defaults exist for {sorted(sde_defaults)}."
    )
  config = get_default_configs({"name": sde, **sde_defaults[sde]})

  config.data = data = ml_collections.ConfigDict()
  data.dataset = dataset
  data.data_dir = None  # None: the TFDS default directory
  data.image_size = image_size
  data.num_channels = 3
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False

  config.model = model = ml_collections.ConfigDict()
  model.dropout = 0.1
  model.embedding_type = "fourier"
  return config
