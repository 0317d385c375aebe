"""Reference outputs of pytorch-fid's FID Inception with seeded random weights, for tests/test_inception.py.

The real FID weights (95 MB) are neither committed nor downloadable here, and neither is a random set
of that size. Instead this script and the test both build the same random weights with numpy from
`SEED`, in the published state-dict layout (`random_state_dict`), and the script stores what
pytorch-fid computes with them on seeded inputs (`reference_inputs`) in a small npz:
  tests/fixtures/inception/reference.npz
    layout          JSON list of [key, shape] in the state dict's order (from pytorch-fid's model)
    weights_sha256  SHA-256 of the generated weights (the test checks it regenerated the same)
    inputs_sha256   SHA-256 of the generated inputs
    pool3_<name>    [B, 2048] pool-3 features, logits_<name> [B, 1008] (fc applied to pool3),
    block{0,1,2}_mean_<name>  per-channel spatial means of the first blocks' outputs, [B, C]
  for each input batch <name> in `reference_inputs`.

Needs torch and a local copy of pytorch-fid; not run in CI. To re-run (from the repo root):
  python3 -m venv /work/torch-venv
  /work/torch-venv/bin/pip install torch==2.13.0+cpu numpy==2.4.6
  /work/torch-venv/bin/pip install --no-deps torchvision   # only its Python model code is used
  mkdir -p /tmp/pytorch-fid && git -C <pytorch-fid git dir> archive HEAD src | tar -x -C /tmp/pytorch-fid
  /work/torch-venv/bin/python tools/make_inception_fixture.py --pytorch-fid /tmp/pytorch-fid/src
(made with pytorch-fid at b9c1811, torch 2.13.0+cpu, torchvision 0.29.1, numpy 2.4.6). The wheel's
torchvision is a CUDA build whose compiled operators do not load with CPU torch, so the script imports
only its `models.inception` module, without running the package's `__init__`.

This module imports numpy only at the top, so that the test can import `random_state_dict` and
`reference_inputs` without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import types

import numpy as np

SEED = 20151205
FIXTURE = os.path.join(
  os.path.dirname(__file__), "..", "tests", "fixtures", "inception", "reference.npz"
)


def random_state_dict(
  layout: list[tuple[str, tuple[int, ...]]], seed: int = SEED
) -> dict[str, np.ndarray]:
  """Seeded random weights for every (key, shape) of the FID Inception's state dict, float32.

  Each tensor has its own stream, seeded by (seed, its index in `layout`). Convolutions are He-normal
  (std sqrt(2 / fan_in)) and batch norms close to identity, so that activations keep an O(1) scale
  through the 94 convolutions and the features are far from degenerate.
  """
  state = {}
  for index, (key, shape) in enumerate(layout):
    rng = np.random.default_rng([seed, index])
    shape = tuple(shape)
    if key.endswith("conv.weight"):
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif key.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith("bn.bias") or key.endswith("bn.running_mean"):
      value = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    elif key.endswith("bn.running_var"):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key == "fc.weight":
      value = rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(shape[1]))
    elif key == "fc.bias":
      value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      raise ValueError(f"unexpected key {key} in the FID Inception layout")
    state[key] = value
  return state


def reference_inputs(seed: int = SEED) -> dict[str, np.ndarray]:
  """Seeded images in [0, 1], NHWC float32: small ones (upsampled to 299) and full-size ones."""
  rng = np.random.default_rng([seed, 10**6])
  return {
    "32px": rng.uniform(size=(4, 32, 32, 3)).astype(np.float32),
    "299px": rng.uniform(size=(2, 299, 299, 3)).astype(np.float32),
  }


def sha256_of(arrays: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for key in sorted(arrays):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()


def _import_pytorch_fid(src: str) -> types.ModuleType:
  """Imports pytorch_fid.inception from `src`, with torchvision's model code but not its operators."""
  import importlib.util

  spec = importlib.util.find_spec("torchvision")
  if spec is None:
    raise SystemExit("torchvision is not installed: pip install --no-deps torchvision")
  package = types.ModuleType("torchvision")
  package.__path__ = list(spec.submodule_search_locations)
  package.__version__ = "0.29.1"
  models = types.ModuleType("torchvision.models")
  models.__path__ = [os.path.join(package.__path__[0], "models")]
  package.models = models
  sys.modules["torchvision"], sys.modules["torchvision.models"] = package, models
  import torchvision.models.inception as inception

  models.inception = inception
  models.inception_v3 = inception.inception_v3
  sys.path.insert(0, src)
  import pytorch_fid.inception

  return pytorch_fid.inception


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pytorch-fid", required=True, help="pytorch-fid's src directory")
  parser.add_argument("--out", default=FIXTURE)
  args = parser.parse_args()

  import torch
  import torch.nn.functional as F

  torch.manual_seed(0)
  pfi = _import_pytorch_fid(args.pytorch_fid)

  # pytorch-fid builds its network, then loads the published weights from a URL: record the network
  # it builds and answer the download with the random weights in the same layout.
  built: list[torch.nn.Module] = []
  make_inception = pfi._inception_v3

  def recording_inception(*a, **k):
    built.append(make_inception(*a, **k))
    return built[-1]

  layout: list[tuple[str, tuple[int, ...]]] = []
  weights: dict[str, np.ndarray] = {}

  def random_weights(*a, **k):
    for key, value in built[-1].state_dict().items():
      if not key.endswith("num_batches_tracked"):
        layout.append((key, tuple(value.shape)))
    weights.update(random_state_dict(layout))
    return {key: torch.from_numpy(value) for key, value in weights.items()}

  pfi._inception_v3 = recording_inception
  pfi.load_state_dict_from_url = random_weights
  model = pfi.InceptionV3(output_blocks=[0, 1, 2, 3]).eval()  # strict load: layout must match

  inputs = reference_inputs()
  out = {
    "layout": np.array(json.dumps(layout)),
    "weights_sha256": np.array(sha256_of(weights)),
    "inputs_sha256": np.array(sha256_of(inputs)),
  }
  fc_weight, fc_bias = torch.from_numpy(weights["fc.weight"]), torch.from_numpy(weights["fc.bias"])
  with torch.no_grad():
    for name, images in inputs.items():
      blocks = model(torch.from_numpy(images).permute(0, 3, 1, 2))
      pool3 = blocks[3].flatten(1)
      out[f"pool3_{name}"] = pool3.numpy()
      out[f"logits_{name}"] = F.linear(pool3, fc_weight, fc_bias).numpy()
      for i in range(3):
        out[f"block{i}_mean_{name}"] = blocks[i].mean(dim=(2, 3)).numpy()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out}: {len(layout)} tensors, {sum(v.size for v in weights.values())} weights")


if __name__ == "__main__":
  main()
