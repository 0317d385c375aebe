"""Defaults for scikit-learn's 8x8 digits, the embedded default that trains on a CPU in minutes.

The data (datasets.Digits) are 1,797 real grey 8x8 images shipped with scikit-learn: the first
1,500 train, the last 297 test; pixel values 0..16 are divided by 16 and centred to [-1, 1].
The schema is the one of every config (configs/README.md); `configs/digits/*` pick the network.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # VP SDE with the paper's CIFAR-10 arguments: at t = 1 the data are forgotten (std ~ 1), and the
  # DDPM-style sampler needs no per-dataset sigma_max.
  config.sde = sde = ml_collections.ConfigDict()
  sde.name = "vpsde"
  sde.beta_min = 0.1
  sde.beta_max = 20.0
  sde.N = 1000

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 5001
  training.snapshot_freq = 1000
  training.log_freq = 50
  training.eval_freq = 250
  training.snapshot_freq_for_preemption = 250
  training.snapshot_sampling = True
  training.objective = "dsm"
  training.continuous = True
  training.reduce_mean = True
  training.likelihood_weighting = False
  training.importance_sampling = False
  training.eps = 1e-5
  # One step per call: on CPU a rolled lax.scan around convolutions is far slower
  # (ENVIRONMENT.md, "Trap").
  training.n_jitted_steps = 1
  # Options of the other objectives (losses.py), as in the toy schema.
  training.n_projections = 1
  training.projection = "rademacher"
  training.sigma = 0.1

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.eps = 1e-3
  sampling.ode_solver = "dopri5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  sampling.batch_size = 64  # an 8x8 grid of samples at each snapshot

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 5
  # 296 = 8 x 37: one batch holds all but one of the 297 test digits, on 1, 2, 4 or 8 devices.
  evaluate.batch_size = 296
  evaluate.enable_sampling = True
  evaluate.num_samples = 1024
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
  data.dataset = "DIGITS"
  data.data_dir = None  # unused: the digits ship with scikit-learn
  data.image_size = 8  # native; a multiple of 8 repeats each pixel into a block
  data.num_channels = 1
  data.random_flip = False  # a mirrored digit is not a digit
  data.centered = True
  data.uniform_dequantization = False  # when on, 17 levels: (v + u) / 17 for v in 0..16

  config.model = model = ml_collections.ConfigDict()
  # EMA over about the last 200 steps. The run is short: with 0.999 the EMA still holds
  # 0.999^1000 = 37% of the initial weights at the first snapshot (step 1000), and its samples
  # diverge while the raw weights already draw recognisable digits.
  model.ema_rate = 0.995
  model.dropout = 0.1

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 200
  optim.grad_clip = 1.0

  config.seed = 42
  return config
