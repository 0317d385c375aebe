"""Time and peak host memory to import a full-size released checkpoint (checkpoint_import.py).

Writes a `.pth` in score_sde_pytorch's released layout with random weights for
`configs/ve/cifar10_ncsnpp_continuous.py` (62.8M parameters, raw and EMA: about 500 MB), then runs
`import_checkpoint` in a fresh child process (so that its memory is not mixed with the writer's),
`--repeats` times into fresh work directories. Reports the wall time of each import (reading the
.pth, mapping, writing the orbax checkpoint; includes tracing the network with jax.eval_shape and
jax's start-up, measured separately) and the child's peak resident memory
(resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).

  python benchmarks/import_time.py [--config ve/cifar10_ncsnpp_continuous] [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CHILD = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import checkpoint_import
config = importlib.import_module({module!r}).get_config()
t1 = time.perf_counter()
step = checkpoint_import.import_checkpoint(config, {workdir!r}, {path!r})
t2 = time.perf_counter()
print(json.dumps({{"startup_s": t1 - t0, "import_s": t2 - t1, "step": step}}))
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="ve/cifar10_ncsnpp_continuous")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  import checkpoint_import
  import pth_reader

  module = "configs." + args.config.replace("/", ".")
  config = importlib.import_module(module).get_config()
  tmp = tempfile.mkdtemp(prefix="import_bench_")
  try:
    path = os.path.join(tmp, "checkpoint_24.pth")
    t0 = time.perf_counter()
    ckpt = checkpoint_import.random_torch_checkpoint(config)
    n = sum(v.size for k, v in ckpt["model"].items() if k != "module.sigmas")
    pth_reader.save_pth(ckpt, path)
    del ckpt
    size = os.path.getsize(path)
    print(
      f"{args.config}: {n:,} parameters (incl. the Fourier W), file {size / 2**20:.0f} MiB, "
      f"written in {time.perf_counter() - t0:.1f} s"
    )
    for r in range(args.repeats):
      workdir = os.path.join(tmp, f"run{r}")
      code = _CHILD.format(root=ROOT, module=module, workdir=workdir, path=path)
      t0 = time.perf_counter()
      out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
      ).stdout
      wall = time.perf_counter() - t0
      result = json.loads(out.strip().splitlines()[-1])
      peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
      print(
        f"repeat {r}: import {result['import_s']:.1f} s (process start-up and imports "
        f"{result['startup_s']:.1f} s, wall {wall:.1f} s), peak child RSS {peak_mib:.0f} MiB"
      )
      shutil.rmtree(workdir, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
