"""An MLP on the 64 pixels of scikit-learn's 8x8 digits (flattened by models/mlp.py), VP SDE in
continuous time: a fallback to the NCSN++ default that certainly runs fast on any CPU."""

from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  # About 100 steps/s on 2 CPU cores: 20,000 steps in a few minutes (83% of the samples of a
  # 17,600-step run were classified with confidence > 0.8, as 85% of the real test digits are).
  training = config.training
  training.n_iters = 20001
  training.snapshot_freq = 5000
  training.snapshot_freq_for_preemption = 2500
  training.eval_freq = 1000
  training.log_freq = 250
  config.model.update(
    name="mlp",
    ema_rate=0.995,  # see default_digits_configs
    hidden=512,
    num_layers=4,
    embedding_dim=128,
    embedding_type="fourier",  # of log(999 t); see models/mlp.py
    fourier_scale=1.0,
    dropout=0.0,
    scale_by_sigma=False,
  )
  return config
