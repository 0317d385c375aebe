"""Toy training speed: steps/s of run_lib's full train step on a 2-D toy (MLP, continuous DSM).

The config is configs/toy/checkerboard.py (batch 512, 4 x 256 MLP, VP SDE). What is timed is one
call of the jitted data-parallel step built by `run_lib.build_training`, data included (the toy
source draws batches with numpy, `run_lib.stacked_batches` shards them), for n_jitted_steps 1 and
10 (an unrolled lax.scan). Variants run in interleaved rounds and are reported as medians with
ratios to n_jitted_steps = 1, so the ratio stays meaningful on a shared machine.

  python benchmarks/toy_training.py [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import run_lib  # noqa: E402
from configs.toy import checkerboard  # noqa: E402


class Variant:
  def __init__(self, n_jitted: int):
    config = checkerboard.get_config()
    config.training.n_jitted_steps = n_jitted
    config.training.snapshot_sampling = False
    self.n = n_jitted
    self.training = run_lib.build_training(config)
    self.state = self.training.init_state(jax.random.key(0))
    self.iterator = datasets.get_dataset(config, split="train")
    self.key = jax.random.key(1)
    self.batch = int(config.training.batch_size)
    self.call()  # compile

  def call(self) -> None:
    batches = run_lib.stacked_batches(self.iterator, self.n)
    self.state, metrics = self.training.train_step(self.state, batches, self.key)
    jax.block_until_ready(metrics["loss"])

  def steps_per_s(self, steps: int) -> float:
    calls = max(1, steps // self.n)
    start = time.perf_counter()
    for _ in range(calls):
      self.call()
    return calls * self.n / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
  variants = {n: Variant(n) for n in (1, 10)}
  results = {n: [] for n in variants}
  for _ in range(args.rounds):
    for n, variant in variants.items():
      results[n].append(variant.steps_per_s(args.steps))
  base = np.median(results[1])
  for n, values in results.items():
    median = float(np.median(values))
    batch = variants[n].batch
    print(
      f"n_jitted_steps={n:2d}: {median:8.1f} steps/s  {median * batch:10.0f} examples/s  "
      f"ratio {median / base:.2f}"
    )


if __name__ == "__main__":
  main()
