"""DDPM (Ho et al. 2020) on LSUN church_outdoor 256x256."""

from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs("vpsde")
  config.sde.N = 1000

  training = config.training
  training.continuous = False
  training.objective = "ddpm"
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "ancestral_sampling"
  sampling.corrector = "none"

  data = config.data
  data.category = "church_outdoor"
  data.centered = True

  config.model.update(
    name="ddpm",
    scale_by_sigma=False,
    ema_rate=0.9999,
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=128,
    ch_mult=(1, 1, 2, 2, 4, 4),
    num_res_blocks=2,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
  )

  optim = config.optim
  optim.lr = 2e-05
  return config
