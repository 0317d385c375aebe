"""NCSN (Song & Ermon 2019) on CIFAR-10: 10 noise levels from 1 to 0.01, no EMA."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs("vesde")
  config.sde.sigma_max = 1.0
  config.sde.N = 10

  training = config.training
  training.continuous = False
  training.objective = "smld"

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 100
  sampling.snr = 0.316

  config.model.update(
    name="ncsn",
    scale_by_sigma=False,
    num_scales=10,
    ema_rate=0.0,
    normalization="InstanceNorm++",
    nonlinearity="elu",
    nf=128,
    interpolation="bilinear",
  )

  optim = config.optim
  optim.optimizer = "Adam"
  optim.lr = 0.001
  optim.beta1 = 0.9
  optim.eps = 1e-08
  optim.amsgrad = False
  optim.weight_decay = 0.0
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
