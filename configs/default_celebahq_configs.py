"""Defaults of the 1024x1024 CelebA-HQ experiment (NCSN++ with the VE SDE, Song et al. 2021, Fig. 1).

The released 1024x1024 configs were standalone; their shared values live here and
`ve/celebahq_ncsnpp_continuous` adds the model. The 256x256 CelebA-HQ configs start from
`default_lsun_configs`, as released. Fields the released file lacked (n_jitted_steps, the eval
switches) take the values of the other high-resolution defaults.
"""

import ml_collections

from configs import default_base

# Only the VE SDE was released at this resolution.
SDE_DEFAULTS = {"vesde": {"sigma_min": 0.01, "sigma_max": 1348.0, "N": 2000}}


def get_default_configs(sde: str = "vesde") -> ml_collections.ConfigDict:
  """The 1024x1024 CelebA-HQ defaults (only the VE SDE was released at this resolution)."""
  config = default_base.get_image_configs(sde, SDE_DEFAULTS, dataset="CelebAHQ", image_size=1024)

  training = config.training
  training.batch_size = 8
  training.n_iters = 2_400_001
  training.snapshot_freq_for_preemption = 5000
  training.n_jitted_steps = 1

  config.sampling.snr = 0.15
  config.eval.end_ckpt = 96
  # The released file pointed at the authors' own TFRecord file; set this to yours.
  config.data.tfrecords_path = None
  config.model.dropout = 0.0
  config.optim.amsgrad = False
  return config
