"""Inpainting throughput (images/s) against unconditional PC sampling with the same settings.

The digits model of configs/digits/digits_mlp.py (the MLP over the 64 pixels; --model ncsnpp for
configs/digits/digits_ncsnpp_continuous.py) with RANDOM-INIT parameters (throughput does not depend
on the weights; no trained checkpoint is needed), VP SDE, the config's sampler settings unless
overridden (--predictor, --corrector, --steps). Three samplers on one device, jitted, timed after
compilation in interleaved rounds, median reported: unconditional PC, inpainting (left half
missing) and super-resolution x2 (the orthogonal-transform path). The ratio column is images/s
relative to unconditional sampling (and the same from process CPU time, steadier on a shared
machine): the overhead of replacement (one Gaussian draw and a select,
or a transform and its inverse, per predictor / corrector call).

  python benchmarks/inpainting_throughput.py [--model mlp] [--batch 64] [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import controllable_generation as cg  # noqa: E402
import controllable_lib  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from configs.digits import digits_mlp, digits_ncsnpp_continuous  # noqa: E402
from models import utils as mutils  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mlp", choices=("mlp", "ncsnpp"))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=200, help="SDE steps N (config: 1000)")
  parser.add_argument("--predictor", default="reverse_diffusion")
  parser.add_argument("--corrector", default="langevin")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()

  config = (digits_mlp if args.model == "mlp" else digits_ncsnpp_continuous).get_config()
  config.sde.N = args.steps
  sde = sde_lib.get_sde(config.sde)
  model = mutils.get_model(config)
  shape = (args.batch, 8, 8, 1)
  params = mutils.init_params(jax.random.key(0), model, sde, (1, *shape[1:]))
  score_fn = mutils.get_score_fn(sde, model)
  kwargs = dict(
    predictor=sampling.PREDICTORS.get(args.predictor),
    corrector=sampling.CORRECTORS.get(args.corrector),
    inverse_scaler=lambda x: x,
    snr=float(config.sampling.snr),
    n_steps=int(config.sampling.n_steps_each),
    eps=float(config.sampling.eps),
  )
  images = jax.random.uniform(jax.random.key(1), shape, minval=-1.0, maxval=1.0)
  inpaint_mask = controllable_lib.make_mask("left_half", shape, 0.5, jax.random.key(2))
  unconditional = jax.jit(sampling.get_pc_sampler(sde, score_fn, shape, **kwargs))
  inpaint = jax.jit(
    cg.get_linear_observation_sampler(sde, score_fn, shape, cg.inpainting(), **kwargs)
  )
  superres = jax.jit(
    cg.get_linear_observation_sampler(sde, score_fn, shape, cg.superresolution(2), **kwargs)
  )
  sr_y = cg.superresolution_data(cg.downsample(images, 2), 2)
  sr_mask = cg.superresolution_mask(shape, 2)
  samplers = {
    "unconditional PC": lambda key: unconditional(key, params),
    "inpainting (left half)": lambda key: inpaint(key, params, images, inpaint_mask),
    "super-resolution x2": lambda key: superres(key, params, sr_y, sr_mask),
  }
  print(f"device: {jax.devices()[0].device_kind} x1 of {jax.device_count()}, jax {jax.__version__}")
  print(
    f"digits {args.model} (random init), VP SDE N = {args.steps}, {args.predictor} + "
    f"{args.corrector}, batch {args.batch}, float32"
  )
  nfe, compile_s = {}, {}
  for i, (name, fn) in enumerate(samplers.items()):
    start = time.perf_counter()
    x, n = fn(jax.random.key(i))
    jax.block_until_ready(x)
    compile_s[name], nfe[name] = time.perf_counter() - start, int(n)
  # Wall time, and the process's CPU time (all threads), which a shared machine disturbs less.
  times = {name: [] for name in samplers}
  cpu = {name: [] for name in samplers}
  for r in range(args.rounds):
    for name, fn in samplers.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      x, _ = fn(jax.random.key(100 + r))
      jax.block_until_ready(jnp.asarray(x))
      times[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  print(
    f"{'sampler':26s} {'images/s':>9s} {'NFE':>6s} {'s/call':>8s} {'ratio':>6s} "
    f"{'cpu s/call':>10s} {'cpu ratio':>9s} {'compile+1st s':>14s}"
  )
  first = first_cpu = None
  for name in samplers:
    seconds = float(np.median(times[name]))
    cpu_seconds = float(np.median(cpu[name]))
    rate = args.batch / seconds
    first = rate if first is None else first
    first_cpu = cpu_seconds if first_cpu is None else first_cpu
    print(
      f"{name:26s} {rate:9.1f} {nfe[name]:6d} {seconds:8.3f} {rate / first:6.2f} "
      f"{cpu_seconds:10.3f} {first_cpu / cpu_seconds:9.2f} {compile_s[name]:14.1f}"
    )


if __name__ == "__main__":
  main()
