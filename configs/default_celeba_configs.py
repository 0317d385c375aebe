"""Defaults of the CelebA experiments (64x64 RGB; NCSN, NCSNv2 and NCSN++ with SMLD).

Every experiment config under `configs/ve/**/celeba*` starts from `get_default_configs`
and overrides what differs. Values are the released ones; `configs/README.md` maps the released
field names to ours (the SDE's arguments live in `config.sde`, not `config.model`).
"""

import ml_collections

from configs import default_base

# Each SDE's arguments on CelebA 64x64: sigma_max = 90 follows Song & Ermon 2020, Technique 1.
SDE_DEFAULTS = {
  "vesde": {"sigma_min": 0.01, "sigma_max": 90.0, "N": 1000},
  "vpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 1000},
  "subvpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 1000},
}


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The CelebA defaults with `config.sde` set to the named SDE's arguments.

  Args:
    sde: "vesde", "vpsde" or "subvpsde" (the original's `config.training.sde`).
  """
  config = default_base.get_image_configs(sde, SDE_DEFAULTS, dataset="CELEBA", image_size=64)
  config.sampling.snr = 0.17
  return config
