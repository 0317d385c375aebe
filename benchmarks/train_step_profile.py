"""Where the time of run_lib's train step goes, by kind of XLA operation (CPU).

Traces a few calls of the reduced DDPM++ train step of benchmarks/train_throughput.py (batch 16 of
32x32x3, random batches, one device) with `jax.profiler`, reads the per-operation events of the
trace, and sorts each executed operation of the compiled program by what it computes:
convolutions (forward, input gradient, weight gradient: a weight gradient is the convolution whose
window spans the image), dots, reductions, transposes / copies and the rest (elementwise
fusions). It prints milliseconds per step for each, and the network modules (from XLA's op_name
metadata) that the non-convolution time belongs to. Operation times add up to more than the wall
time when XLA runs independent operations at once.

The default is XLA's own YNN setting (`--ynn None`), where convolutions are YNN fusions whose
events cover their run. With run_lib's training default (`--ynn absent`: YNN fusion of reductions
only) convolutions run as Eigen tasks whose trace events cover only their dispatch, so their time
is missing from the table (the wall time is right).

With `--reference <score_sde_pytorch> --reference_python <python with torch>` it also prints
PyTorch's profile of the published implementation's step (benchmarks/reference_train_step.py
--profile), for the side-by-side view.

  python benchmarks/train_step_profile.py [--steps 5] [--ynn None | absent | ''] \
      [--reference DIR --reference_python PYTHON]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_lib  # noqa: E402
from benchmarks import train_throughput  # noqa: E402

MODULE_KEYS = ("Dropout", "GroupNorm", "Attn", "silu", "concatenate", "Conv", "Dense", "NIN")


def parse_hlo(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
  """{computation: [lines]} and {instruction name: its line} of a compiled HLO module."""
  computations, instructions, current = {}, {}, None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
    if head:
      current = head.group(1)
      computations[current] = []
    elif line.startswith("}"):
      current = None
    elif current:
      computations[current].append(line)
      inst = re.match(r"\s*(?:ROOT )?%(\S+) = ", line)
      if inst:
        instructions[inst.group(1)] = line
  return computations, instructions


def body(name: str, computations, instructions) -> str:
  """The instruction's line and, for a fusion, the lines of the computation it calls."""
  line = instructions[name]
  called = re.search(r"calls=%([\w.\-]+)", line)
  return "\n".join([line, *computations.get(called.group(1), [])]) if called else line


def kind_of(text: str) -> str:
  ops = set(re.findall(r"= \S+ ([\w-]+)\(", text))
  if "convolution" in ops:
    conv = next(x for x in text.splitlines() if " convolution(" in x)
    window = re.search(r"window=\{size=(\d+)x", conv)
    if window and int(window.group(1)) > 3:
      return "conv weight gradient"
    if "transpose(jvp(" in text:
      return "conv input gradient"
    return "conv forward"
  for op, kind in (("dot", "dot"), ("reduce", "reduce"), ("transpose", "transpose/copy")):
    if op in ops:
      return kind
  return "copy" if ops <= {"copy", "bitcast", "parameter"} else "elementwise/other"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=5, help="traced calls")
  parser.add_argument(
    "--ynn",
    default="None",
    help="config.training.xla_cpu_ynn_fusion_type ('absent': run_lib's default; 'None': XLA's)",
  )
  parser.add_argument("--reference", help="local copy of score_sde_pytorch")
  parser.add_argument("--reference_python", help="python of a venv with torch")
  args = parser.parse_args()

  ynn = {"absent": run_lib.TRAIN_YNN_FUSION_TYPE, "None": None}.get(args.ynn, args.ynn)
  with tempfile.TemporaryDirectory() as data_dir:  # unread: the batches below are random
    train_throughput.write_images(data_dir, 1)
    config = train_throughput.reduced_config(data_dir, args.batch, 1, ynn)
    config.training.snapshot_sampling = False
    training = run_lib.build_training(config)
  state = training.init_state(jax.random.key(0))
  shape = (jax.local_device_count(), args.batch // jax.local_device_count(), 32, 32, 3)
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  batches = run_lib.stacked_batches(iter([{"image": images}]), 1)
  key = jax.random.key(1)
  for _ in range(3):
    state, metrics = training.train_step(state, batches, key)
    np.asarray(metrics["loss"])
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = training.train_step(state, batches, key)
    np.asarray(metrics["loss"])
  wall_ms = (time.perf_counter() - start) / args.steps * 1e3

  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.steps):
      state, metrics = training.train_step(state, batches, key)
      np.asarray(metrics["loss"])
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  hlo = training.train_step.lower(state, batches, key).compile().as_text()
  computations, instructions = parse_hlo(hlo)

  by_kind, by_module = collections.Counter(), collections.Counter()
  for event in events:
    name = event["name"]
    if name not in instructions:
      continue
    text = body(name, computations, instructions)
    kind = kind_of(text)
    ms = event["dur"] / 1e3 / args.steps
    by_kind[kind] += ms
    if not kind.startswith("conv"):
      names = re.findall(r'op_name="([^"]*)"', text)
      module = next((k for k in MODULE_KEYS if any(k.lower() in n.lower() for n in names)), "rest")
      by_module[module] += ms

  total = sum(by_kind.values())
  print(
    f"reduced DDPM++ train step, batch {args.batch}, 1 device, "
    f"xla_cpu_ynn_fusion_type {args.ynn}: {wall_ms:.0f} ms wall per step "
    f"({args.batch / wall_ms * 1e3:.1f} images/s); operations {total:.0f} ms"
  )
  for kind, ms in by_kind.most_common():
    print(f"  {kind:<22}{ms:8.1f} ms {ms / total:7.1%}")
  print("non-convolution time by module:")
  for module, ms in by_module.most_common():
    print(f"  {module:<22}{ms:8.1f} ms")

  if args.reference:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_train_step.py")
    command = [args.reference_python, script, "--reference", args.reference, "--profile"]
    command += ["--batch", str(args.batch)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    print("\nscore_sde_pytorch's step (torch.profiler, self CPU time):\n" + result.stdout)


if __name__ == "__main__":
  main()
