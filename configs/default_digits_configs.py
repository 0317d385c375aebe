"""Defaults for scikit-learn's 8x8 digits, the embedded default that trains on a CPU in minutes.

The data (datasets.Digits) are 1,797 real grey 8x8 images shipped with scikit-learn: the first
1,500 train, the last 297 test; pixel values 0..16 are divided by 16 and centred to [-1, 1].
The schema is the one of every config (configs/default_base.py, configs/README.md);
`configs/digits/*` pick the network.
"""

import ml_collections

from configs import default_base


def get_default_configs() -> ml_collections.ConfigDict:
  # VP SDE with the paper's CIFAR-10 arguments: at t = 1 the data are forgotten (std ~ 1), and the
  # DDPM-style sampler needs no per-dataset sigma_max.
  config = default_base.get_default_configs(
    {"name": "vpsde", "beta_min": 0.1, "beta_max": 20.0, "N": 1000}
  )

  training = config.training
  # About 10 minutes on 2 CPU cores, sample grids at steps 1000 and 2000 (README.md).
  training.n_iters = 2000
  training.snapshot_freq = 1000
  training.eval_freq = 250
  training.snapshot_freq_for_preemption = 250
  training.reduce_mean = True
  # Five steps per call (an unrolled scan: a rolled one around convolutions is far slower on CPU,
  # ENVIRONMENT.md "Trap"): 5.5 steps/s against 4.6 with one, for ~40 s more compilation.
  training.n_jitted_steps = 5
  # Options of the other objectives (losses.py), as in the toy schema.
  training.n_projections = 1
  training.projection = "rademacher"
  training.sigma = 0.1

  sampling = config.sampling
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.batch_size = 64  # an 8x8 grid of samples at each snapshot

  evaluate = config.eval
  evaluate.end_ckpt = 5
  # 296 = 8 x 37: one batch holds all but one of the 297 test digits, on 1, 2, 4 or 8 devices.
  evaluate.batch_size = 296
  evaluate.num_samples = 1024

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

  config.optim.lr = 1e-3
  config.optim.warmup = 200
  return config
