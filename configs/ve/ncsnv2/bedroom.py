"""NCSNv2 (Song & Ermon 2020) on LSUN bedroom 128x128: 1086 noise levels from 190 to 0.01."""

from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs("vesde")
  config.sde.sigma_min = 0.01
  config.sde.sigma_max = 190.0
  config.sde.N = 1086
  # The released file misspelt `continuous`, leaving it True; NCSNv2 needs the discrete levels.

  training = config.training
  training.batch_size = 128
  training.continuous = False
  training.objective = "smld"

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 3
  sampling.snr = 0.095

  data = config.data
  data.category = "bedroom"
  data.image_size = 128

  config.model.update(
    name="ncsnv2_128",
    scale_by_sigma=True,
    num_scales=1086,
    ema_rate=0.9999,
    normalization="InstanceNorm++",
    nonlinearity="elu",
    nf=128,
    interpolation="bilinear",
  )

  optim = config.optim
  optim.optimizer = "Adam"
  optim.lr = 0.0001
  optim.beta1 = 0.9
  optim.eps = 1e-08
  optim.amsgrad = False
  optim.weight_decay = 0.0
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
