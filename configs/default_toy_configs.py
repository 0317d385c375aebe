"""Defaults for 2-D toy distributions: the schema every config of this project shares.

Sections (DESIGN.md, STYLE.md): `sde` (name + that SDE's own arguments), `model`, `training`,
`optim`, `sampling`, `data`, `eval`, plus `seed`. Field names follow the paper's released configs;
where ours differ (the SDE's arguments live in `config.sde`, not `config.model`), the README maps them.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # The forward SDE: `name` selects a registered class (sde_lib.SDES); the rest are its arguments.
  config.sde = sde = ml_collections.ConfigDict()
  sde.name = "vpsde"
  sde.beta_min = 0.1
  sde.beta_max = 20.0
  sde.N = 1000

  # Training.
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 512
  training.n_iters = 6001
  training.snapshot_freq = 2000
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq_for_preemption = 1000
  training.snapshot_sampling = True
  # Objective (losses.OBJECTIVES): dsm (continuous SDE), smld, ddpm, dsm_single, ssm, ssm_vr, ism, esm.
  training.objective = "dsm"
  training.continuous = True
  training.reduce_mean = True
  training.likelihood_weighting = False
  training.importance_sampling = False
  training.eps = 1e-5  # smallest time t drawn by the continuous objectives
  training.n_jitted_steps = 1
  # Sliced score matching: projections per example and their distribution.
  training.n_projections = 1
  training.projection = "rademacher"
  # Single-noise DSM: the one noise level.
  training.sigma = 0.1

  # Sampling.
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"  # pc | ode
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.eps = 1e-3  # smallest time reached by the samplers
  sampling.ode_solver = "dopri5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  sampling.batch_size = 1024

  # Evaluation.
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 1
  evaluate.batch_size = 1024
  evaluate.enable_sampling = True
  evaluate.num_samples = 4096
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

  # Data.
  config.data = data = ml_collections.ConfigDict()
  data.dataset = "checkerboard"
  data.dim = 2
  data.centered = True
  data.num_examples = 100_000

  # Model.
  config.model = model = ml_collections.ConfigDict()
  model.name = "mlp"
  model.ema_rate = 0.999
  model.hidden = 256
  model.num_layers = 4
  model.embedding_dim = 128
  model.fourier_scale = 16.0
  model.dropout = 0.0

  # Optimisation.
  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 100
  optim.grad_clip = 1.0

  config.seed = 42
  return config
