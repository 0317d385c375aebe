"""NCSN++ on CelebA-HQ 1024x1024 with the VE SDE, continuous time."""

from configs.default_celebahq_configs import get_default_configs


def get_config():
  config = get_default_configs("vesde")

  training = config.training
  training.continuous = True
  training.objective = "dsm"
  training.reduce_mean = False

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"

  config.model.update(
    name="ncsnpp",
    scale_by_sigma=True,
    ema_rate=0.9999,
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=16,
    ch_mult=(1, 2, 4, 8, 16, 32, 32, 32),
    num_res_blocks=1,
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
    embedding_type="fourier",
    fourier_scale=16,
    conv_size=3,
  )
  return config
