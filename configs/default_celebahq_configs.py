"""Defaults of the 1024x1024 CelebA-HQ experiment (NCSN++ with the VE SDE, Song et al. 2021, Fig. 1).

The released 1024x1024 configs were standalone; their shared values live here and
`ve/celebahq_ncsnpp_continuous` adds the model. The 256x256 CelebA-HQ configs start from
`default_lsun_configs`, as released. Fields the released file lacked (n_jitted_steps, the eval
switches) take the values of the other high-resolution defaults.
"""

import ml_collections
from ml_collections.config_dict import placeholder

SDE_DEFAULTS = {"vesde": {"sigma_min": 0.01, "sigma_max": 1348.0, "N": 2000}}
SAMPLING_EPS = {"vesde": 1e-5}


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The 1024x1024 CelebA-HQ defaults (only the VE SDE was released at this resolution)."""
  if sde not in SDE_DEFAULTS:
    raise ValueError(
      f"config.sde.name = {sde!r}: 1024x1024 defaults exist for {sorted(SDE_DEFAULTS)} only."
    )
  config = ml_collections.ConfigDict()
  config.sde = ml_collections.ConfigDict({"name": sde, **SDE_DEFAULTS[sde]})

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 8
  training.n_iters = 2_400_001
  training.snapshot_freq = 50_000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 5000
  training.snapshot_sampling = True
  training.objective = "dsm"
  training.continuous = True
  training.reduce_mean = False
  training.likelihood_weighting = False
  training.importance_sampling = False
  training.eps = 1e-5
  training.n_jitted_steps = 1

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.15
  sampling.eps = SAMPLING_EPS[sde]
  sampling.ode_solver = "dopri5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 96
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

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CelebAHQ"
  data.data_dir = None
  # The released file pointed at the authors' own TFRecord file; set this to yours.
  data.tfrecords_path = None
  data.image_size = 1024
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
  optim.amsgrad = False
  optim.weight_decay = 0.0
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.seed = 42
  return config
