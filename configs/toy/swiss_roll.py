"""2-D Swiss roll (datasets.SwissRoll, noise std 0.1): VP SDE, continuous DSM, MLP."""

from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.data.dataset = "swiss_roll"
  config.data.noise = 0.1
  config.model.fourier_scale = 1.0
  return config
