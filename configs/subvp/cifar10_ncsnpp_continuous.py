"""NCSN++ on CIFAR-10 with the sub-VP SDE, continuous time."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs("subvpsde")

  training = config.training
  training.continuous = True
  training.objective = "dsm"
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"

  data = config.data
  data.centered = True

  config.model.update(
    name="ncsnpp",
    scale_by_sigma=False,
    ema_rate=0.9999,
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
    fourier_scale=16,
    conv_size=3,
  )
  return config
