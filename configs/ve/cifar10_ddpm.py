"""The DDPM network on CIFAR-10 trained with the discrete SMLD objective (VE noise levels)."""

from configs.default_cifar10_configs import get_default_configs


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
    name="ddpm",
    scale_by_sigma=True,
    ema_rate=0.999,
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
    conv_size=3,
  )
  return config
