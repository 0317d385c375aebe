"""Evaluation throughput of the digits model: PC and ODE sampling (images/s, NFE), bits/dim (s/image).

Builds what `eval_lib.evaluate` runs for one checkpoint, from a digits config (default the MLP,
configs/digits/digits_mlp.py; `--config digits_ncsnpp_continuous` for the NCSN++ default): the PC
sampler of the config (Euler-Maruyama, N = 1000, no corrector), the same with reverse diffusion +
Langevin (snr 0.16), the probability-flow ODE sampler (dopri5, rtol = atol = 1e-5), each drawing a
batch of `--batch` images, and bits/dim through the probability-flow ODE (Rademacher Hutchinson,
rtol = atol = 1e-5, uniform dequantisation of the 17 levels) of `--batch` test digits. Parameters
are a random initialisation, or the EMA parameters of the newest checkpoint of `--workdir` (the
NFE of the adaptive solvers depends on them). Timed after compilation, in interleaved rounds (the
machine may be shared), median reported, on every visible device (data-parallel).

  python benchmarks/eval_throughput.py [--config digits_mlp] [--workdir runs/digits] [--batch 256]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import checkpoints  # noqa: E402
import datasets  # noqa: E402
import eval_lib  # noqa: E402
import parallel  # noqa: E402
from run_lib import Experiment  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_mlp", help="a module of configs/digits")
  parser.add_argument("--workdir", default=None, help="restore the newest checkpoint's EMA params")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=3, help="interleaved timed calls per function")
  args = parser.parse_args()

  config = importlib.import_module(f"configs.digits.{args.config}").get_config()
  config.eval.batch_size = args.batch
  config.eval.num_samples = args.batch
  config.eval.bpd_num_repeats = 1
  experiment = Experiment(config)
  plan = eval_lib.Plan([0], ("samples", "bpd"), "none", 1, args.batch, None, None, "")
  evaluator = eval_lib.Evaluator(config, plan, experiment)
  if args.workdir:
    manager = checkpoints.CheckpointManager.from_config(args.workdir, config)
    state, step = manager.restore_latest(evaluator.abstract_state)
    manager.close()
    params, what = state.ema_params, f"EMA params of step {step} in {args.workdir}"
  else:
    state = jax.jit(lambda key: experiment.init_state(key, evaluator.optimizer))(jax.random.key(0))
    params, what = parallel.replicate(state.ema_params), "random initialisation"

  def sampler(**changes):
    c = config.copy_and_resolve_references()
    c.sampling.update(changes)
    return Experiment(c).sampler(args.batch)

  samplers = {
    "pc euler_maruyama + none": sampler(method="pc", predictor="euler_maruyama", corrector="none"),
    "pc reverse_diffusion + langevin": sampler(
      method="pc", predictor="reverse_diffusion", corrector="langevin"
    ),
    "ode dopri5": sampler(method="ode"),
  }
  bpd_fn = evaluator.bpd_fn()
  test = next(datasets.get_dataset(config, split="test", evaluation=True))["image"]
  data = parallel.shard(test)
  functions = {name: (lambda key, fn=fn: fn(key, params)) for name, fn in samplers.items()}
  functions["bits/dim (ODE, Hutchinson)"] = lambda key: bpd_fn(key, params, data)

  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
  print(
    f"config digits/{args.config} ({config.model.name}), {what}, batch {args.batch}, "
    f"SDE {config.sde.name} N = {config.sde.N}"
  )
  nfe, compile_s = {}, {}
  for i, (name, fn) in enumerate(functions.items()):
    start = time.perf_counter()
    out, n = fn(jax.random.key(i))
    jax.block_until_ready(out)
    compile_s[name], nfe[name] = time.perf_counter() - start, int(n)
    if name.startswith("bits"):
      print(f"  bits/dim of {args.batch} test digits: {float(np.mean(np.asarray(out))):.3f}")
  times = {name: [] for name in functions}
  for r in range(args.rounds):
    for name, fn in functions.items():
      start = time.perf_counter()
      out, _ = fn(jax.random.key(100 + r))
      jax.block_until_ready(out)
      times[name].append(time.perf_counter() - start)

  print(
    f"{'function':34s} {'images/s':>9s} {'ms/image':>9s} {'NFE':>6s} {'s/call':>8s} "
    f"{'ms/NFE':>8s} {'compile+1st s':>14s}"
  )
  for name in functions:
    seconds = float(np.median(times[name]))
    print(
      f"{name:34s} {args.batch / seconds:9.1f} {1e3 * seconds / args.batch:9.3f} {nfe[name]:6d} "
      f"{seconds:8.3f} {1e3 * seconds / nfe[name]:8.3f} {compile_s[name]:14.1f}"
    )


if __name__ == "__main__":
  main()
