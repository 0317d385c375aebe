"""Defaults of the 1024x1024 FFHQ experiment: the CelebA-HQ 1024 defaults on another dataset.

The released FFHQ and CelebA-HQ 1024x1024 configs share every default value; the experiment
config `ve/ffhq_ncsnpp_continuous` sets what differs (reduce_mean).
"""

import ml_collections

from configs import default_celebahq_configs

SDE_DEFAULTS = default_celebahq_configs.SDE_DEFAULTS


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The 1024x1024 FFHQ defaults (VE SDE only, as released)."""
  config = default_celebahq_configs.get_default_configs(sde)
  config.data.dataset = "FFHQ"
  return config
