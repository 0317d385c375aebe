"""The published PyTorch implementation's full train step, timed (run by train_throughput.py).

Runs score_sde_pytorch's own code (its model, loss, optimizer manager and EMA, exactly as its
run_lib wires them) for the reduced DDPM++ config of train_throughput.py, on random batches in
[-1, 1]. It needs torch and a local copy of github.com/yang-song/score_sde_pytorch, so it is run in
a separate virtual environment, never in this project's:

  python -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install "torch==2.13.0+cpu" \\
      ml-collections numpy scipy
  git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch
  /tmp/torch-venv/bin/python benchmarks/reference_train_step.py --reference /tmp/score_sde_pytorch

Prints one line, `images/s <value>`, after `--warmup` untimed steps (with `--profile`,
torch.profiler's table of one step instead). The reference's op/ package
compiles CUDA extensions when imported; `torch.utils.cpp_extension.load` is replaced by a no-op
during that import, and the package then falls back to its pure-PyTorch upfirdn2d on CPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", required=True, help="local copy of score_sde_pytorch")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument(
    "--profile", action="store_true", help="print torch.profiler's table of one step instead"
  )
  args = parser.parse_args()

  import torch
  import torch.utils.cpp_extension as cpp_extension

  torch.set_num_threads(args.threads)
  sys.path.insert(0, args.reference)
  real_load = cpp_extension.load
  cpp_extension.load = lambda *a, **k: None
  try:
    importlib.import_module("op")
  finally:
    cpp_extension.load = real_load
  losses = importlib.import_module("losses")
  sde_lib = importlib.import_module("sde_lib")
  mutils = importlib.import_module("models.utils")
  importlib.import_module("models.ncsnpp")  # registers the model
  ema_lib = importlib.import_module("models.ema")
  configs = importlib.import_module("configs.vp.cifar10_ddpmpp_continuous")

  config = configs.get_config()
  config.device = torch.device("cpu")
  config.model.nf = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (16,)
  config.training.batch_size = args.batch

  torch.manual_seed(0)
  model = mutils.create_model(config)
  ema = ema_lib.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
  sde = sde_lib.VPSDE(
    beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=config.model.num_scales
  )
  step_fn = losses.get_step_fn(
    sde,
    train=True,
    optimize_fn=losses.optimization_manager(config),
    reduce_mean=config.training.reduce_mean,
    continuous=config.training.continuous,
    likelihood_weighting=config.training.likelihood_weighting,
  )
  n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  size = config.data.image_size
  batches = [
    2 * torch.rand(args.batch, config.data.num_channels, size, size) - 1
    for _ in range(args.warmup + args.steps)
  ]
  for batch in batches[: args.warmup]:
    float(step_fn(state, batch))
  if args.profile:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
      float(step_fn(state, batches[-1]))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return
  start = time.perf_counter()
  for batch in batches[args.warmup :]:
    float(step_fn(state, batch))  # the loss is read back each step, as run_lib does
  elapsed = time.perf_counter() - start
  print(f"parameters {n_params}")
  print(f"images/s {args.steps * args.batch / elapsed:.3f}")


if __name__ == "__main__":
  main()
