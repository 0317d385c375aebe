"""models.layers.GroupNorm against flax.linen.GroupNorm on CPU: forward, and forward + backward.

Shapes are those of the reduced DDPM++ of benchmarks/train_throughput.py (batch 16; 32, 64 and 96
channels at 32x32, 16x16 and 8x8, min(C // 4, 32) groups); the backward pass is that of
sum(swish(GroupNorm(x)) * x), with respect to x, scale and bias. Both are timed in interleaved
rounds (medians), and the largest differences of the outputs and gradients are printed.

  python benchmarks/group_norm.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import layers  # noqa: E402

SHAPES = [(16, 32, 32, 32), (16, 32, 32, 96), (16, 16, 16, 64), (16, 8, 8, 64)]


def seconds(fn, args, calls: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / calls


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  print(
    f"{'shape':<20}{'forward ms':>22}{'ratio':>7}{'fwd+bwd ms':>22}{'ratio':>7}{'max diff':>10}"
  )
  for shape in SHAPES:
    channels = shape[-1]
    groups = min(channels // 4, 32)
    x = 2.0 * jax.random.normal(jax.random.key(0), shape) + 1.0
    scale, bias = jnp.linspace(0.5, 1.5, channels), jnp.linspace(-0.1, 0.1, channels)
    modules = {
      "flax": nn.GroupNorm(num_groups=groups, epsilon=1e-6),
      "ours": layers.GroupNorm(num_groups=groups, epsilon=1e-6),
    }
    forward, gradient = {}, {}
    for name, module in modules.items():

      def apply(x, scale, bias, module=module):
        return module.apply({"params": {"scale": scale, "bias": bias}}, x)

      def loss(x, scale, bias, apply=apply):
        return jnp.sum(nn.swish(apply(x, scale, bias)) * x)

      forward[name] = jax.jit(apply)
      gradient[name] = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    inputs = (x, scale, bias)
    diff = float(jnp.max(jnp.abs(forward["flax"](*inputs) - forward["ours"](*inputs))))
    for a, b in zip(gradient["flax"](*inputs), gradient["ours"](*inputs), strict=True):
      diff = max(diff, float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))))
    times = {(kind, name): [] for kind in ("fwd", "grad") for name in modules}
    for _ in range(args.rounds):
      for name in modules:
        times["fwd", name].append(seconds(forward[name], inputs))
        times["grad", name].append(seconds(gradient[name], inputs))
    ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    print(
      f"{str(shape):<20}{ms['fwd', 'flax']:>10.2f} -> {ms['fwd', 'ours']:<8.2f}"
      f"{ms['fwd', 'flax'] / ms['fwd', 'ours']:>6.2f}x"
      f"{ms['grad', 'flax']:>10.2f} -> {ms['grad', 'ours']:<8.2f}"
      f"{ms['grad', 'flax'] / ms['grad', 'ours']:>6.2f}x{diff:>10.1e}"
    )


if __name__ == "__main__":
  main()
