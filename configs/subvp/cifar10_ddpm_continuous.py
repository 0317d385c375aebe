"""The DDPM network on CIFAR-10 with the sub-VP SDE, continuous time.

The released config equals `configs/vp/ddpm/cifar10_continuous.py` but for the SDE.
Sub-VP takes the VP SDE's arguments (beta_min, beta_max, N) and sampling eps, so only the
SDE's name changes.
"""

from configs.vp.ddpm import cifar10_continuous as vp_config


def get_config():
  config = vp_config.get_config()
  config.sde.name = "subvpsde"
  return config
