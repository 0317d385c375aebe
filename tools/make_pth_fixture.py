"""Writes small `.pth` files with real PyTorch, for tests/test_pth_reader.py (which needs no torch).

Needs torch (not run in CI); the files it writes are committed under tests/fixtures/pth/:
  zip.pth       torch.save in the zip format (PyTorch >= 1.6)
  legacy.pth    torch.save(..., _use_new_zipfile_serialization=False), the pre-1.6 format
  expected.npz  every tensor as numpy, keyed by its '/'-joined path in the saved object

Re-run (from the repo root, in a venv with torch, e.g. `python3 -m venv /work/torch-venv &&
/work/torch-venv/bin/pip install torch==2.13.0+cpu numpy`):
  /work/torch-venv/bin/python tools/make_pth_fixture.py --out tests/fixtures/pth
"""

import argparse
import os

import numpy as np
import torch


def _saved_object() -> dict:
  """Tensors of every storage type, views, parameters, a module's state dict and plain values."""
  g = torch.Generator().manual_seed(0)
  base = torch.arange(10, dtype=torch.float32)
  module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=g))
  return {
    "float32": torch.randn(3, 4, generator=g),
    "float64": torch.randn(5, generator=g, dtype=torch.float64),
    "float16": torch.randn(2, 3, generator=g).half(),
    "bfloat16": torch.randn(4, generator=g).bfloat16(),
    "int64": torch.tensor([-(2**40), 0, 7], dtype=torch.int64),
    "int32": torch.tensor([[-3, 4]], dtype=torch.int32),
    "int16": torch.tensor([-300, 300], dtype=torch.int16),
    "int8": torch.tensor([-128, 127], dtype=torch.int8),
    "uint8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "transposed": torch.randn(3, 4, generator=g).t(),  # stride (1, 4): not contiguous
    "view_offset": base[2:6],  # offset 2 into a storage shared with the next one
    "view_strided": base.view(2, 5)[:, 1:3],  # offset 1, stride (5, 1)
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 3),
    "param": torch.nn.Parameter(torch.randn(2, generator=g)),
    "state_dict": module.state_dict(),  # OrderedDict with _metadata, num_batches_tracked
    "nested": {
      "list": [torch.ones(2), torch.zeros(1, dtype=torch.int64)],
      "tuple": (torch.eye(2),),
    },
    "size": torch.Size([2, 3]),
    "misc": [1, 2.5, "text", None, True, (1, "a"), 2**40],
  }


def _flatten(obj, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  if isinstance(obj, torch.Tensor):
    t = obj.detach()
    out[prefix] = (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()
  elif isinstance(obj, dict):
    for k, v in obj.items():
      out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  elif isinstance(obj, list | tuple) and not isinstance(obj, torch.Size):
    for i, v in enumerate(obj):
      out.update(_flatten(v, f"{prefix}/{i}"))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/fixtures/pth")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  obj = _saved_object()
  torch.save(obj, os.path.join(args.out, "zip.pth"))
  torch.save(obj, os.path.join(args.out, "legacy.pth"), _use_new_zipfile_serialization=False)
  np.savez(os.path.join(args.out, "expected.npz"), **_flatten(obj))
  print(f"wrote {args.out}/zip.pth, legacy.pth, expected.npz with torch {torch.__version__}")


if __name__ == "__main__":
  main()
