"""Defaults of the paper's CIFAR-10 experiments (32x32 RGB, Song et al. 2021, Table 1-3).

Every experiment config under `configs/{ve,vp,subvp}/cifar10_*` starts from `get_default_configs`
and overrides what differs. Values are the released ones; `configs/README.md` maps the released
field names to ours (the SDE's arguments live in `config.sde`, not `config.model`).
"""

import ml_collections

from configs import default_base

# Each SDE's arguments on CIFAR-10: sigma_max = 50 is about the largest pairwise distance between
# training images (Song & Ermon 2020, Technique 1).
SDE_DEFAULTS = {
  "vesde": {"sigma_min": 0.01, "sigma_max": 50.0, "N": 1000},
  "vpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 1000},
  "subvpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 1000},
}


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The CIFAR-10 defaults with `config.sde` set to the named SDE's arguments.

  Args:
    sde: "vesde", "vpsde" or "subvpsde" (the original's `config.training.sde`).
  """
  config = default_base.get_image_configs(sde, SDE_DEFAULTS, dataset="CIFAR10", image_size=32)
  config.eval.begin_ckpt = 9
  config.eval.enable_sampling = False
  config.eval.bpd_num_repeats = 5  # the paper averages CIFAR-10 bits/dim over 5 dequantisations
  return config
