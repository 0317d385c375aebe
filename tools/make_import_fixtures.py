"""Writes tests/fixtures/import/*: small score_sde_pytorch checkpoints with the reference outputs.

For each option combination below, builds yang-song/score_sde_pytorch's network on a small config
(nf 8, 16x16 images, ch_mult (1, 2)) with random weights, saves it in the released checkpoint
layout ({"model": state_dict with "module." keys, "ema": {"decay", "num_updates", "shadow_params"},
"optimizer": ..., "step": ...}, as the port's utils.save_checkpoint writes it), and records in an
npz the network's outputs on fixed inputs with the raw and the EMA weights, and the scores of the
port's own `get_score_fn` (EMA weights) for the case's SDE and time discretisation.

Not run in CI: it needs torch and a local copy of the reference code (never committed here):

  git -C /path/to/yang-song+score_sde_pytorch archive HEAD | tar -x -C /tmp/score_sde_pytorch
  /path/to/torch-venv/bin/python tools/make_import_fixtures.py /tmp/score_sde_pytorch

Upstream bugs worked around here: layerspp's nearest up-sampling passes "nearest" as the scale
factor (shimmed); the fused FIR up-sampling convolution (fir with resamp_with_conv on the way up)
indexes a tensor with a negative step, which torch refuses, so no case uses it (our Conv2d up path
is checked against the original JAX code by tests/test_ncsnpp.py instead).

The reference's op/ package compiles CUDA extensions when imported; `torch.utils.cpp_extension.load`
is replaced by a dummy during that import so that it falls back to its pure-PyTorch upfirdn2d.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import fixture_cases  # tools/, the directory of this script
import numpy as np
from fixture_cases import NCSNPP, REFINENET, VE, VE_SMALL, VP

OUT_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "import"
)

# name -> (model overrides, sde, continuous). Together they cover: Fourier / positional embedding,
# FIR / plain resampling, BigGAN / DDPM blocks, progressive none / output_skip / residual,
# progressive_input none / input_skip / residual, combine sum / cat, conditional or not,
# scale_by_sigma with Fourier (sigma = c_noise) and with level indices (discrete VE).
CASES = {
  # NCSN++ (cont.), VE: FIR, BigGAN, residual input pyramid, Fourier, scale_by_sigma.
  "ncsnpp_ve_continuous": (dict(), VE, True),
  # DDPM++ (cont.), VP: plain resampling, BigGAN, no pyramids, positional.
  "ddpmpp_vp_continuous": (
    dict(fir=False, progressive_input="none", embedding_type="positional", scale_by_sigma=False),
    VP,
    True,
  ),
  # Output skip + input skip (sum), FIR, DDPM-discrete VP.
  "ncsnpp_skip_vp_discrete": (
    dict(
      progressive="output_skip",
      progressive_input="input_skip",
      embedding_type="positional",
      scale_by_sigma=False,
    ),
    VP,
    False,
  ),
  # Residual output pyramid, DDPM blocks with plain resampling, no conditioning, continuous VE
  # with Fourier features.
  "ncsnpp_ddpmblocks_unconditional": (
    dict(
      resblock_type="ddpm",
      fir=False,
      progressive="residual",
      progressive_input="none",
      conditional=False,
      skip_rescale=False,
    ),
    VE,
    True,
  ),
  # Discrete VE: positional embedding of the level index, scale_by_sigma by the level's sigma,
  # input_skip combined by concatenation, plain resampling.
  "ncsnpp_ve_discrete_cat": (
    dict(
      fir=False,
      progressive="output_skip",
      progressive_input="input_skip",
      progressive_combine="cat",
      embedding_type="positional",
    ),
    VE,
    False,
  ),
  # DDPM (Ho et al. 2020) U-Net, discrete VP; its GroupNorms have 32 groups, so nf = 32.
  "ddpm_vp_discrete": (
    dict(
      name="ddpm",
      nf=32,
      ch_mult=(1, 1),
      num_res_blocks=1,
      attn_resolutions=(8,),
      dropout=0.1,
      resamp_with_conv=True,
      conditional=True,
      scale_by_sigma=False,
      nonlinearity="swish",
      normalization="GroupNorm",
    ),
    VP,
    False,
  ),
  # NCSNv2 (RefineNet, InstanceNorm++, output / sigma_i), discrete VE on 10 levels: the network
  # gets the integer level index. 16x16: one halving, then the two dilated stages at 8x8.
  "ncsnv2_ve_discrete": (REFINENET, VE_SMALL, False),
  # NCSN (v1): conditional InstanceNorm++ everywhere, average pooling, no division by sigma.
  "ncsn_ve_discrete": (
    {**REFINENET, "name": "ncsn", "scale_by_sigma": False},
    VE_SMALL,
    False,
  ),
}

BATCH = 3
IMAGE_SIZE = 16
CHANNELS = 3


def _import_reference(ref_dir: str):
  sys.path.insert(0, ref_dir)
  import torch
  import torch.utils.cpp_extension as cpp_extension

  real_load = cpp_extension.load
  cpp_extension.load = lambda *args, **kwargs: None
  try:
    import op  # noqa: F401  (falls back to the pure-PyTorch upfirdn2d on CPU)
  finally:
    cpp_extension.load = real_load
  import ml_collections
  import torch.nn.functional as F

  import sde_lib
  from models import layerspp

  # Upstream bug: layerspp's nearest up-sampling calls F.interpolate(x, size, "nearest"), which puts
  # the mode in the scale-factor slot and always raises; this shim reads it as the mode.
  class _Functional:
    def __getattr__(self, name):
      return getattr(F, name)

    @staticmethod
    def interpolate(x, size=None, scale_factor=None, mode="nearest", **kwargs):
      if isinstance(scale_factor, str):
        scale_factor, mode = None, scale_factor
      return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, **kwargs)

  layerspp.F = _Functional()
  from models.ema import ExponentialMovingAverage

  from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the models)
  from models import utils as mutils

  _patch_refinenet(torch, ncsnv2)

  return torch, ml_collections, sde_lib, mutils, ExponentialMovingAverage


def _patch_refinenet(torch, ncsnv2) -> None:
  """In-process fixes of the port's NCSNv2 / NCSN (its files stay untouched).

  - `ncsn_conv3x3` pads by 1 whatever the dilation (dilated blocks then shrink the feature maps
    and their residual sums fail) and scales `conv.bias` even when there is none (bias=False
    raises): replaced by a 3x3 convolution padded by the dilation, as in the NCSN authors' code.
  - The port's NCSN asks `get_normalization(config)` for the plain InstanceNorm++ but calls it
    with the level index; it is given the conditional layer (class itself, since the blocks pass
    the number of classes positionally).
  - `ConditionalResidualBlock` defaults to dilation=None and compares it with 1: default 1.
  """
  import functools

  from models import layers, normalization

  def ncsn_conv3x3(
    in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0, padding=None
  ):
    init_scale = 1e-10 if init_scale == 0 else init_scale
    conv = torch.nn.Conv2d(
      in_planes,
      out_planes,
      kernel_size=3,
      stride=stride,
      bias=bias,
      dilation=dilation,
      padding=dilation if padding is None else padding,
    )
    with torch.no_grad():
      conv.weight.mul_(init_scale)
      if conv.bias is not None:
        conv.bias.mul_(init_scale)
    return conv

  layers.ncsn_conv3x3 = ncsn_conv3x3
  ncsnv2.ncsn_conv3x3 = ncsnv2.conv3x3 = ncsn_conv3x3
  plain = ncsnv2.get_normalization

  def get_normalization(config, conditional=False):
    if config.model.name == "ncsn":
      return normalization.ConditionalInstanceNorm2dPlus
    return plain(config, conditional)

  ncsnv2.get_normalization = get_normalization
  ncsnv2.ConditionalResidualBlock = functools.partial(layers.ConditionalResidualBlock, dilation=1)


def _reference_config(ml_collections, model: dict, sde: dict, continuous: bool):
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict(
    {"continuous": continuous, "sde": sde["name"], "batch_size": BATCH}
  )
  # `channels`: the port's NCSNv2 / NCSN read config.data.channels, which no config defines.
  config.data = ml_collections.ConfigDict(
    {"image_size": IMAGE_SIZE, "num_channels": CHANNELS, "channels": CHANNELS, "centered": False}
  )
  config.model = ml_collections.ConfigDict(fixture_cases.reference_model_fields(model, sde))
  config.device = "cpu"
  return config


def make_case(refs, name: str, overrides: dict, sde: dict, continuous: bool, seed: int) -> None:
  torch, ml_collections, sde_lib, mutils, EMA = refs
  base = NCSNPP if overrides.get("name", "ncsnpp") == "ncsnpp" else {}
  model_fields = {**base, **overrides}
  config = _reference_config(ml_collections, model_fields, sde, continuous)
  torch.manual_seed(seed)
  net = mutils.create_model(config)  # DataParallel: state_dict keys start with "module."
  net.eval()
  # Random weights everywhere (init_scale=0 would leave output convolutions at ~zero otherwise).
  with torch.no_grad():
    for p in net.parameters():
      if p.requires_grad:
        p.add_(0.05 * torch.randn_like(p))
  ema = EMA(net.parameters(), decay=0.999)
  with torch.no_grad():  # distinct EMA weights, so a swapped raw / EMA import fails the test
    for s in ema.shadow_params:
      s.add_(0.02 * torch.randn_like(s))
  optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
  step = 1234 + seed
  torch.save(
    {
      "optimizer": optimizer.state_dict(),
      "model": net.state_dict(),
      "ema": ema.state_dict(),
      "step": step,
    },
    os.path.join(OUT_DIR, f"{name}.pth"),
  )

  gen = torch.Generator().manual_seed(100 + seed)
  x = torch.rand(BATCH, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
  ref_sde = fixture_cases.reference_sde(sde_lib, sde)
  if continuous:
    t = torch.tensor([0.05, 0.4, 0.93])
  else:  # times on the discrete grid, as the discrete samplers use them
    n = sde["N"] - 1
    t = torch.tensor([n, (5 * n) // 9, n // 9], dtype=torch.float64).div(n).float()
  if sde["name"] == "vesde":
    labels = (
      ref_sde.marginal_prob(torch.zeros_like(x), t)[1]
      if continuous
      else torch.round((ref_sde.T - t) * (ref_sde.N - 1)).long()
    )
  else:
    labels = t * 999 if continuous else t * (ref_sde.N - 1)
  with torch.no_grad():
    out_raw = net(x, labels)
    ema.copy_to(net.parameters())
    out_ema = net(x, labels)
    score = mutils.get_score_fn(ref_sde, net, train=False, continuous=continuous)(x, t)

  def nhwc(a):
    return a.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32)

  our_model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_fields.items()}
  if model_fields["name"] in ("ncsnv2_64", "ncsn"):  # the level table is the SDE's levels
    our_model["num_scales"] = sde["N"]
  np.savez_compressed(
    os.path.join(OUT_DIR, f"{name}.npz"),
    x=nhwc(x),
    t=t.numpy().astype(np.float32),
    c_noise=labels.numpy(),
    out_raw=nhwc(out_raw),
    out_ema=nhwc(out_ema),
    score_ema=nhwc(score),
    step=np.int64(step),
    config=json.dumps(
      {
        "model": our_model,
        "sde": sde,
        "continuous": continuous,
        "data": {"image_size": IMAGE_SIZE, "num_channels": CHANNELS, "centered": False},
      }
    ),
  )
  print(f"{name}: {sum(p.numel() for p in net.parameters())} parameters, step {step}")


def write_layouts(refs, path: str) -> None:
  """The port's 128- and 256-pixel NCSNv2 state_dict layouts (nf 2): keys, shapes, EMA length."""
  global IMAGE_SIZE
  torch, ml_collections, _, mutils, _ = refs
  layouts, image_size = {}, IMAGE_SIZE
  for name, size in (("ncsnv2_128", 128), ("ncsnv2_256", 256)):
    IMAGE_SIZE = size
    config = _reference_config(
      ml_collections, {**REFINENET, "name": name, "nf": 2}, VE_SMALL, False
    )
    net = mutils.create_model(config)
    layouts[name] = {
      "model": [[k, list(v.shape)] for k, v in net.state_dict().items()],
      "ema_length": sum(1 for p in net.parameters() if p.requires_grad),
    }
  IMAGE_SIZE = image_size
  with open(path, "w") as f:
    json.dump(layouts, f, indent=0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("reference_dir", help="work tree of yang-song/score_sde_pytorch")
  parser.add_argument(
    "--only", nargs="*", default=None, help="case names (or 'layouts') to (re)write"
  )
  args = parser.parse_args()
  os.makedirs(OUT_DIR, exist_ok=True)
  refs = _import_reference(os.path.abspath(args.reference_dir))
  for seed, (name, (overrides, sde, continuous)) in enumerate(CASES.items()):
    if args.only and name not in args.only:
      continue
    make_case(refs, name, overrides, sde, continuous, seed)
  if not args.only or "layouts" in args.only:
    write_layouts(refs, os.path.join(OUT_DIR, "ncsnv2_port_layouts.json"))


if __name__ == "__main__":
  main()
