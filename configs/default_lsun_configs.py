"""Defaults of the 256x256 experiments: LSUN bedroom / church, and CelebA-HQ / FFHQ at 256.

The configs `ve/{bedroom,church,celebahq_256,ffhq_256}_ncsnpp_continuous`, `ve/ncsnv2/bedroom`
and `vp/ddpm/{bedroom,church,celebahq}` start from `get_default_configs`
and overrides what differs. Values are the released ones; `configs/README.md` maps the released
field names to ours (the SDE's arguments live in `config.sde`, not `config.model`).
"""

import ml_collections
from ml_collections.config_dict import placeholder

# Each SDE's arguments at 256x256 (the released defaults use 2000 steps for every SDE; the DDPM
# configs set N = 1000 themselves).
SDE_DEFAULTS = {
  "vesde": {"sigma_min": 0.01, "sigma_max": 378.0, "N": 2000},
  "vpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 2000},
  "subvpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 2000},
}
# The smallest time the samplers reach (the original hard-coded these next to the SDE choice).
SAMPLING_EPS = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The 256x256 defaults with `config.sde` set to the named SDE's arguments.

  Args:
    sde: "vesde", "vpsde" or "subvpsde" (the original's `config.training.sde`).
  """
  if sde not in SDE_DEFAULTS:
    raise ValueError(f"config.sde.name = {sde!r}: LSUN defaults exist for {sorted(SDE_DEFAULTS)}.")
  config = ml_collections.ConfigDict()
  config.sde = ml_collections.ConfigDict({"name": sde, **SDE_DEFAULTS[sde]})

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64
  training.n_iters = 2_400_001
  training.snapshot_freq = 50_000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 5000  # extra checkpoints for pre-emptible machines
  training.snapshot_sampling = True  # sample a grid at each snapshot
  training.objective = "dsm"  # losses.OBJECTIVES; continuous DSM unless a config says otherwise
  training.continuous = True
  training.reduce_mean = False
  training.likelihood_weighting = False
  training.importance_sampling = False
  training.eps = 1e-5  # smallest time drawn by the continuous objective
  training.n_jitted_steps = 5

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"  # pc | ode
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.075
  sampling.eps = SAMPLING_EPS[sde]
  sampling.ode_solver = "dopri5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 512
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

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "LSUN"
  data.data_dir = None  # None: the TFDS default directory
  data.image_size = 256
  data.num_channels = 3
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False

  config.model = model = ml_collections.ConfigDict()
  model.dropout = 0.0
  model.embedding_type = "fourier"

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
