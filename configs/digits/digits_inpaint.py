"""Inpainting (and the other controllable tasks) with the digits MLP model (configs/digits/digits_mlp.py).

  python main.py --config configs/digits/digits_inpaint.py --workdir runs/digits_mlp --mode controllable

uses the newest checkpoint of the digits MLP run; set config.controllable.task to "colorize" (RGB data
only), "superres" or "conditional" (after --mode train_classifier) for the others.
"""

import ml_collections

from configs.digits.digits_mlp import get_config as get_mlp_config


def get_config():
  config = get_mlp_config()
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.controllable = controllable = ml_collections.ConfigDict()
  controllable.task = "inpaint"
  controllable.mask = "left_half"  # the missing pixels: left_half | bottom_half | center | random
  controllable.mask_ratio = 0.5  # share of missing pixels for mask = "random"
  controllable.superres_factor = 2
  controllable.scale = 1.0  # classifier guidance scale for task = "conditional"
  controllable.labels = None  # classes to draw (cycled); None: 0, 1, 2, ...
  controllable.classifier_workdir = None  # default <workdir>/classifier
  controllable.classifier_steps = 2000
  controllable.num_images = 64
  controllable.split = "test"
  controllable.image_folder = None  # a PNG / JPEG folder instead of the digits
  # The noise-conditional classifier (models/wideresnet_noise_conditional.py), small for 8x8 digits.
  controllable.classifier = ml_collections.ConfigDict(
    dict(
      name="wideresnet_noise_conditional",
      blocks_per_group=1,
      channel_multiplier=2,
      num_classes=10,
      embedding_size=64,
      fourier_scale=16.0,
    )
  )
  return config
