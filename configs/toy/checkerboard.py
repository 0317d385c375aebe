"""Checkerboard (uniform on 8 of 16 unit cells of [-2, 2]^2): VP SDE, continuous DSM, MLP."""

from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = "checkerboard"
  # Fourier features of log c_noise (models/mlp.py); scale 1 resolves the ~12 units of log(999 t).
  config.model.fourier_scale = 1.0
  return config
