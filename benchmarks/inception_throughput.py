"""Throughput of the FID Inception features (images/s): batch 50 of 32x32 images resized to 299.

Random weights (the network's cost does not depend on their values). Prints one line per variant:
a plain `jax.jit` and, on CPU, `evaluation.jit_inference` (XLA CPU's YNN fusion off, faster for
forward-only convolutions here, see ENVIRONMENT.md), which `get_inception_fn` uses.

  python benchmarks/inception_throughput.py [--batch 50] [--size 32] [--iters 5]
"""

import argparse
import time

import jax
import numpy as np

import evaluation


def _measure(fn, images, iters: int) -> tuple[float, float]:
  start = time.perf_counter()
  jax.block_until_ready(fn(images))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(images))
    times.append(time.perf_counter() - start)
  return compile_s, float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args()

  model = evaluation.FIDInceptionV3()
  images = np.random.default_rng(0).uniform(size=(args.batch, args.size, args.size, 3))
  images = images.astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
  apply = lambda x: model.apply({"params": params}, x)
  variants = {"plain jax.jit": jax.jit(apply)}
  if jax.default_backend() == "cpu":
    variants["jit_inference"] = evaluation.jit_inference(apply)  # what get_inception_fn uses
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s)")
  for name, fn in variants.items():
    compile_s, step_s = _measure(fn, images, args.iters)
    print(
      f"{name:>14}: {args.batch / step_s:7.1f} images/s  ({step_s * 1e3:.0f} ms per batch of "
      f"{args.batch} {args.size}x{args.size} -> 299x299; first call {compile_s:.1f} s)"
    )


if __name__ == "__main__":
  main()
