"""NCSNv2 (Song & Ermon 2020) on CIFAR-10: 232 noise levels from 50 to 0.01."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs("vesde")
  config.sde.N = 232

  training = config.training
  training.continuous = False
  training.objective = "smld"

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 5
  sampling.snr = 0.176

  config.model.update(
    name="ncsnv2_64",
    scale_by_sigma=True,
    num_scales=232,
    ema_rate=0.999,
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
