"""Defaults of the 256x256 experiments: LSUN bedroom / church, and CelebA-HQ / FFHQ at 256.

The configs `ve/{bedroom,church,celebahq_256,ffhq_256}_ncsnpp_continuous`, `ve/ncsnv2/bedroom`
and `vp/ddpm/{bedroom,church,celebahq}` start from `get_default_configs`
and override what differs. Values are the released ones; `configs/README.md` maps the released
field names to ours (the SDE's arguments live in `config.sde`, not `config.model`).
"""

import ml_collections

from configs import default_base

# Each SDE's arguments at 256x256 (the released defaults use 2000 steps for every SDE; the DDPM
# configs set N = 1000 themselves).
SDE_DEFAULTS = {
  "vesde": {"sigma_min": 0.01, "sigma_max": 378.0, "N": 2000},
  "vpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 2000},
  "subvpsde": {"beta_min": 0.1, "beta_max": 20.0, "N": 2000},
}


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The 256x256 defaults with `config.sde` set to the named SDE's arguments.

  Args:
    sde: "vesde", "vpsde" or "subvpsde" (the original's `config.training.sde`).
  """
  config = default_base.get_image_configs(sde, SDE_DEFAULTS, dataset="LSUN", image_size=256)

  training = config.training
  training.batch_size = 64
  training.n_iters = 2_400_001
  training.snapshot_freq_for_preemption = 5000

  config.sampling.snr = 0.075

  evaluate = config.eval
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 512

  config.model.dropout = 0.0
  return config
