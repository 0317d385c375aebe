"""Defaults for 2-D toy distributions: the shared schema (configs/default_base.py) for vector data.

Sections (DESIGN.md, STYLE.md): `sde` (name + that SDE's own arguments), `model`, `training`,
`optim`, `sampling`, `data`, `eval`, plus `seed`; default_base.py lists every field. Field names
follow the paper's released configs; where ours differ (the SDE's arguments live in `config.sde`,
not `config.model`), the README maps them.
"""

import ml_collections

from configs import default_base


def get_default_configs() -> ml_collections.ConfigDict:
  # The forward SDE: `name` selects a registered class (sde_lib.SDES); the rest are its arguments.
  config = default_base.get_default_configs(
    {"name": "vpsde", "beta_min": 0.1, "beta_max": 20.0, "N": 1000}
  )

  training = config.training
  training.batch_size = 512
  training.n_iters = 6001
  training.snapshot_freq = 2000
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq_for_preemption = 1000
  training.reduce_mean = True
  training.n_jitted_steps = 1
  # Sliced score matching: projections per example and their distribution.
  training.n_projections = 1
  training.projection = "rademacher"
  # Single-noise DSM: the one noise level.
  training.sigma = 0.1

  sampling = config.sampling
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.batch_size = 1024

  config.eval.end_ckpt = 1
  config.eval.num_samples = 4096

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "checkerboard"
  data.dim = 2
  data.centered = True
  data.num_examples = 100_000

  config.model = model = ml_collections.ConfigDict()
  model.name = "mlp"
  model.ema_rate = 0.999
  model.hidden = 256
  model.num_layers = 4
  model.embedding_dim = 128
  model.fourier_scale = 16.0
  model.dropout = 0.0

  config.optim.lr = 1e-3
  config.optim.warmup = 100
  return config
