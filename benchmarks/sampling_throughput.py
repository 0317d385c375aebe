"""Sampler throughput (samples/s) on a 2-D Gaussian mixture with its exact score.

The PC sampler with Euler-Maruyama (no corrector) and with reverse diffusion + Langevin (one
corrector step, snr 0.16), and the probability-flow ODE sampler (diffrax Dopri5, rtol = atol =
1e-5, per-example adaptive steps), all on the same SDE (N = 1000 steps, eps = 1e-3) and the same
three-component mixture score (closed_form), jitted; timed after compilation, in interleaved rounds
(the machine may be shared), median reported. Each line gives samples/s, NFE (score evaluations on
the batch), the time per score evaluation of the batch, and the ratio of samples/s to the first
sampler's.

  python benchmarks/sampling_throughput.py [--sde vpsde] [--batch 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import closed_form  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402

WEIGHTS = np.array([0.2, 0.3, 0.5], np.float32)
MEANS = np.array([[-5.0, 3.0], [5.0, 2.0], [-1.0, -2.4]], np.float32)
COVS = np.array(
  [[[0.6, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.5]], [[0.5, 0.0], [0.0, 0.8]]], np.float32
)
EPS = 1e-3


def build_samplers(sde, batch: int):
  score_fn = closed_form.gaussian_mixture_score_fn(sde, WEIGHTS, MEANS, COVS)
  shape = (batch, 2)
  identity = lambda x: x
  pc = lambda predictor, corrector: sampling.get_pc_sampler(
    sde,
    score_fn,
    shape,
    sampling.PREDICTORS.get(predictor),
    sampling.CORRECTORS.get(corrector),
    identity,
    snr=0.16,
    n_steps=1,
    eps=EPS,
  )
  return {
    "pc euler_maruyama + none": pc("euler_maruyama", "none"),
    "pc reverse_diffusion + langevin": pc("reverse_diffusion", "langevin"),
    "ode dopri5": sampling.get_ode_sampler(sde, score_fn, shape, identity, eps=EPS),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sde", default="vpsde", choices=sde_lib.SDES.names())
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=3, help="interleaved timed calls per sampler")
  args = parser.parse_args()

  sde = sde_lib.SDES.get(args.sde)()
  samplers = {name: jax.jit(fn) for name, fn in build_samplers(sde, args.batch).items()}
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
  print(f"SDE {args.sde} (N = {sde.N}), batch {args.batch}, 2-D mixture of 3 Gaussians, float32")

  nfe, compile_s = {}, {}
  for i, (name, fn) in enumerate(samplers.items()):
    start = time.perf_counter()
    x, n = fn(jax.random.key(i), None)
    jax.block_until_ready(x)
    compile_s[name], nfe[name] = time.perf_counter() - start, int(n)

  times = {name: [] for name in samplers}
  for r in range(args.rounds):
    for name, fn in samplers.items():
      start = time.perf_counter()
      x, _ = fn(jax.random.key(100 + r), None)
      jax.block_until_ready(x)
      times[name].append(time.perf_counter() - start)

  first = None
  print(
    f"{'sampler':34s} {'samples/s':>10s} {'NFE':>6s} {'s/call':>8s} {'ms/NFE':>8s} "
    f"{'ratio':>6s} {'compile+1st s':>14s}"
  )
  for name in samplers:
    seconds = float(np.median(times[name]))
    rate = args.batch / seconds
    first = rate if first is None else first
    print(
      f"{name:34s} {rate:10.1f} {nfe[name]:6d} {seconds:8.3f} {1e3 * seconds / nfe[name]:8.3f} "
      f"{rate / first:6.2f} {compile_s[name]:14.1f}"
    )


if __name__ == "__main__":
  main()
