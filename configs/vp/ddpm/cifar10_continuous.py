"""The DDPM network on CIFAR-10 with the VP SDE, continuous time."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs("vpsde")

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
    name="ddpm",
    scale_by_sigma=False,
    ema_rate=0.9999,
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
  )
  return config
