"""Eight Gaussians on a circle (datasets.gaussian_mixture_params: radius 2, std 0.2, equal weights):
VP SDE, continuous DSM, MLP. Its exact score under the SDE is known (closed_form.py)."""

from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs()
  data = config.data
  data.dataset = "gaussian_mixture"
  data.num_components = 8
  data.radius = 2.0
  data.component_std = 0.2
  data.weights = None  # None: equal weights
  config.model.fourier_scale = 1.0
  return config
