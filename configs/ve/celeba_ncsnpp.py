"""NCSN++ on CelebA 64x64 trained with the discrete SMLD objective."""

from configs.default_celeba_configs import get_default_configs


def get_config():
  config = get_default_configs("vesde")

  training = config.training
  training.continuous = False
  training.objective = "smld"

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"

  config.model.update(
    name="ncsnpp",
    scale_by_sigma=True,
    sigma_begin=90,
    ema_rate=0.999,
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=4,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
    # Resampling and skip connections.
    fir=True,
    fir_kernel=[1, 3, 3, 1],
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="residual",
    progressive_combine="sum",
    # Attention and noise-level embedding.
    attention_type="ddpm",
    init_scale=0.0,
    embedding_type="positional",
    conv_size=3,
  )
  return config
