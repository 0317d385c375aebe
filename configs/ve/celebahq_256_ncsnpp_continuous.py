"""NCSN++ on CelebA-HQ 256x256 with the VE SDE, continuous time."""

from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs("vesde")
  config.sde.sigma_max = 348.0

  training = config.training
  training.continuous = True
  training.objective = "dsm"

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"

  data = config.data
  data.dataset = "CelebAHQ"
  data.image_size = 256
  data.tfrecords_path = None

  config.model.update(
    name="ncsnpp",
    scale_by_sigma=True,
    ema_rate=0.999,
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=128,
    ch_mult=(1, 1, 2, 2, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
    # Resampling and skip connections.
    fir=True,
    fir_kernel=[1, 3, 3, 1],
    skip_rescale=True,
    resblock_type="biggan",
    progressive="output_skip",
    progressive_input="input_skip",
    progressive_combine="sum",
    # Attention and noise-level embedding.
    attention_type="ddpm",
    init_scale=0.0,
    fourier_scale=16,
    conv_size=3,
  )
  return config
