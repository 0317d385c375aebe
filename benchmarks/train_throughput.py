"""Training throughput (images/s) of run_lib's full step on this machine, data pipeline included.

The model is vp/cifar10_ddpmpp_continuous reduced to nf=32, ch_mult=(1, 2, 2), num_res_blocks=1,
attn_resolutions=(16,) (1,260,547 parameters; ENVIRONMENT.md), batch 16 of 32x32x3. CIFAR-10
cannot be downloaded here, so the data are synthetic: PNG files (smooth random colour images)
written to a temporary folder and read by datasets.py's IMAGE_FOLDER source, the same tf.data path
(decode, random flip, centring, prefetch) a user's own images take.

What is timed is exactly what `run_lib.train` does per call, built by `run_lib.build_training`:
the next n_jitted_steps host batches from the iterator, stacked and sharded
(`run_lib.stacked_batches`), the jitted data-parallel train step (DSM loss, Adam with warm-up and
clipping, EMA, non-finite check), and the wait for its loss. Variants: n_jitted_steps 1 and 5
(an unrolled lax.scan), each compiled with XLA's default CPU options, with YNN fusion of
reductions requested explicitly (`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`)
and with YNN fusion off (empty value), set through `config.training.xla_cpu_ynn_fusion_type`
(run_lib.train_compiler_options). The script also counts the YNN fusions XLA made in each
compiled program. Variants are timed in interleaved rounds (the machine may be
shared) and reported as medians, with ratios to the default n_jitted_steps=1. "data share" is the
part of the wall time spent getting batches (iterator + stack + shard) in the loop; "step only"
re-feeds one sharded batch, without the pipeline.

With `--reference <local copy of score_sde_pytorch> --reference_python <python of a venv with
torch>`, each round also runs the published PyTorch implementation's full train step on the same
config (benchmarks/reference_train_step.py, in a subprocess, 2 threads, random batches: the
pipeline excluded) and the table gives each variant's ratio to it, "step only" against the
reference's step and "images/s" (pipeline included) too. Run it on an idle machine: when another
process competes for the two cores, PyTorch's OpenMP threads wait on each other and the reference
drops from about 90 images/s to 2-3 (this script's own share while the reference runs is printed
to stderr, and is nil).

  python benchmarks/train_throughput.py [--steps 10] [--rounds 3] [--batch 16] [--n_jitted 1 5]
      [--ynn default ynn_reduce ynn_off] [--reference DIR --reference_python PYTHON]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import run_lib  # noqa: E402
from configs.vp import cifar10_ddpmpp_continuous  # noqa: E402

YNN = {"default": None, "ynn_reduce": "LIBRARY_FUSION_TYPE_REDUCE", "ynn_off": ""}


def reduced_config(data_dir: str, batch: int, n_jitted: int, ynn: str | None):
  config = cifar10_ddpmpp_continuous.get_config()
  config.model.update(nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,))
  config.data.update(dataset="IMAGE_FOLDER", data_dir=data_dir, image_size=32, num_channels=3)
  training = config.training
  training.batch_size = batch
  training.n_jitted_steps = n_jitted
  training.xla_cpu_ynn_fusion_type = ynn
  config.eval.batch_size = batch
  config.sampling.batch_size = batch
  return config


def write_images(directory: str, count: int, size: int = 32) -> None:
  """`count` smooth random RGB PNGs (bilinear upsampling of 4x4 noise), like natural images in
  file size and decode cost rather than incompressible noise."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for i in range(count):
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
    image.save(os.path.join(directory, f"{i:05d}.png"))


class Variant:
  """One compiled train step with its own state and data stream."""

  def __init__(self, name: str, config):
    self.name = name
    self.config = config
    self.training = run_lib.build_training(config)
    self.n = self.training.n_jitted
    self.state = self.training.init_state(jax.random.key(0))
    self.key = jax.random.key(1)
    self.iterator = datasets.get_dataset(config, split="train")

  def call(self, batches=None) -> float:
    """One loop iteration; returns the seconds spent getting batches (0 if given)."""
    data_s = 0.0
    if batches is None:
      start = time.perf_counter()
      batches = run_lib.stacked_batches(self.iterator, self.n)
      data_s = time.perf_counter() - start
    self.state, metrics = self.training.train_step(self.state, batches, self.key)
    loss = np.asarray(metrics["loss"])  # the loop waits for the loss, as run_lib.train does
    assert np.all(np.isfinite(loss)) and bool(np.asarray(metrics["state_finite"]))
    return data_s


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10, help="train steps per timed round")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
  parser.add_argument("--images", type=int, default=1024, help="synthetic PNG files")
  parser.add_argument("--n_jitted", type=int, nargs="+", default=[1, 5], help="steps per call")
  parser.add_argument("--ynn", nargs="+", default=list(YNN), choices=list(YNN))
  parser.add_argument("--reference", help="local copy of score_sde_pytorch, to run side by side")
  parser.add_argument("--reference_python", help="python of a venv with torch (for --reference)")
  args = parser.parse_args()
  if bool(args.reference) != bool(args.reference_python):
    parser.error("--reference and --reference_python go together")

  device = jax.devices()[0]
  print(
    f"device: {device.platform} ({device.device_kind}) x {jax.device_count()}, "
    f"{os.cpu_count()} CPUs, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
    f"jax {jax.__version__}"
  )
  with tempfile.TemporaryDirectory() as data_dir:
    write_images(data_dir, args.images)
    variants = [
      Variant(f"n_jitted={n} {name}", reduced_config(data_dir, args.batch, n, ynn))
      for n in args.n_jitted
      for name, ynn in YNN.items()
      if name in args.ynn
    ]
    for variant in variants:
      if args.steps % variant.n:
        parser.error(f"--steps must be a multiple of {variant.n}")
    params = variants[0].state.params
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    print(
      f"reduced DDPM++: {n_params:,} parameters, batch {args.batch} of 32x32x3, "
      f"IMAGE_FOLDER of {args.images} synthetic PNGs"
    )

    # The data pipeline alone: iterator + stack + shard, no compute.
    iterator = datasets.get_dataset(variants[0].config, split="train")
    run_lib.stacked_batches(iterator, 1)
    start = time.perf_counter()
    for _ in range(50):
      run_lib.stacked_batches(iterator, 1)
    pipeline_images_s = 50 * args.batch / (time.perf_counter() - start)

    compile_s = {}
    ynn_fusions = {}
    for variant in variants:  # compilation (and the pipeline's start) in the first call
      start = time.perf_counter()
      variant.call()
      compile_s[variant.name] = time.perf_counter() - start
      print(f"compiled {variant.name} in {compile_s[variant.name]:.0f} s", file=sys.stderr)
      batches = run_lib.stacked_batches(variant.iterator, variant.n)
      lowered = variant.training.train_step.lower(variant.state, batches, variant.key)
      program = lowered.compile().as_text()  # from the cache: no recompilation
      ynn_fusions[variant.name] = len(re.findall(r"^\s*(?:ROOT )?%ynn_fusion\S* = ", program, re.M))
    loop_s = {v.name: [] for v in variants}
    data_share = {v.name: [] for v in variants}
    step_s = {v.name: [] for v in variants}
    reference = []
    for _ in range(args.rounds):
      if args.reference:
        reference.append(run_reference(args))
      for variant in variants:
        calls = args.steps // variant.n
        start, data = time.perf_counter(), 0.0
        for _ in range(calls):
          data += variant.call()
        elapsed = time.perf_counter() - start
        loop_s[variant.name].append(elapsed / args.steps)
        data_share[variant.name].append(data / elapsed)
        batches = run_lib.stacked_batches(variant.iterator, variant.n)
        start = time.perf_counter()
        for _ in range(calls):
          variant.call(batches)
        step_s[variant.name].append((time.perf_counter() - start) / args.steps)

  base = float(np.median(loop_s[variants[0].name]))
  print(
    f"\ndata pipeline alone: {pipeline_images_s:,.0f} images/s\n"
    f"{'variant':<24}{'compile s':>10}{'images/s':>10}{'x default':>10}{'data share':>12}"
    f"{'step only':>11}{'YNN fusions':>13}"
  )
  for variant in variants:
    per_step = float(np.median(loop_s[variant.name]))
    print(
      f"{variant.name:<24}{compile_s[variant.name]:>10.1f}{args.batch / per_step:>10.1f}"
      f"{base / per_step:>10.2f}{float(np.median(data_share[variant.name])):>12.1%}"
      f"{args.batch / float(np.median(step_s[variant.name])):>11.1f}"
      f"{ynn_fusions[variant.name]:>13}"
    )
  if reference:
    ref = float(np.median(reference))
    print(
      f"\npublished PyTorch implementation (score_sde_pytorch), full step without pipeline: "
      f"{ref:.1f} images/s (rounds: {', '.join(f'{r:.1f}' for r in reference)})\n"
      f"{'variant':<24}{'step only / ref':>16}{'images/s / ref':>16}"
    )
    for variant in variants:
      step_rate = args.batch / float(np.median(step_s[variant.name]))
      loop_rate = args.batch / float(np.median(loop_s[variant.name]))
      print(f"{variant.name:<24}{step_rate / ref:>16.2f}{loop_rate / ref:>16.2f}")
  print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def run_reference(args) -> float:
  """images/s of score_sde_pytorch's own train step (benchmarks/reference_train_step.py)."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_train_step.py")
  command = [args.reference_python, script, "--reference", args.reference]
  command += ["--batch", str(args.batch), "--steps", str(args.steps)]
  before = os.times()
  result = subprocess.run(command, capture_output=True, text=True)
  after = os.times()
  used = after.user - before.user + after.system - before.system
  print(f"CPU used here while the reference ran: {used:.1f} s", file=sys.stderr)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return float(re.search(r"^images/s (\S+)$", result.stdout, re.M).group(1))


if __name__ == "__main__":
  main()
