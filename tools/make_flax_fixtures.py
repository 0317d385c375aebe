"""Writes tests/fixtures/import/flax_*: checkpoints of the original score_sde code, with its outputs.

For each case below, builds yang-song/score_sde's own linen network (NCSN++ / DDPM++ option
combinations, DDPM, NCSNv2, NCSN) on a small config, gives it random weights, and writes the
checkpoint exactly as the original's training loop does: `flax.serialization.to_bytes` of its
`models.utils.State` (step, optimizer {target, state {step, param_states}}, lr, model_state,
ema_rate, params_ema, rng), with an Adam optimizer made by its own `losses.get_optimizer`.
`params_ema` differs from the optimizer target, so a test can tell them apart. Next to it, an npz
records the network's outputs on fixed inputs with the target and with the EMA weights, and the
scores of the original's `get_score_fn` (EMA weights) for the case's SDE and time discretisation.

The checkpoint is stored gzip-compressed (`<case>.msgpack.gz`; the tests decompress it to a file
and import that): its Adam moments are zeros and the random weights are multiples of 1/128, so the
fixtures stay small.

Not run in CI: it needs a local copy of the original code (never committed here), and runs in this
project's environment (no torch):

  git -C /path/to/yang-song+score_sde archive HEAD -- . ':!*.ipynb' ':!assets' \\
    | tar -x -C /tmp/score_sde_ref
  python tools/make_flax_fixtures.py /tmp/score_sde_ref [--only case ...]

The original pins jax 0.2.8 / flax 0.3.1; on this project's jax / flax it runs with in-process
shims only (its files are not modified): `tensorflow` and `PIL` stubbed in sys.modules (its utils.py
imports them; its networks do not use them), a minimal `flax.optim` (removed from flax) with the
Optimizer / OptimizerState / Adam state layout of flax 0.3, `flax_return_frozendict` on (its
init_model pops 'params' from a FrozenDict), and its two-argument initialisers (`lambda key,
shape`) called without flax's dtype argument. Its NCSN residual block calls
`self.normalization(h, y)` (creating the layer with the arrays as constructor arguments) where it
means `self.normalization()(h, y)`; the normaliser factory given to it accepts both.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import os
import sys
import types

import fixture_cases  # tools/, the directory of this script
import numpy as np
from fixture_cases import NCSNPP, REFINENET, VE, VE_SMALL, VP

OUT_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "import"
)

BATCH = 3
CHANNELS = 3
QUANTUM = 1.0 / 128  # random weights are multiples of this: the fixture compresses well

# The shared small NCSN++ (tools/fixture_cases.py), with attention at 4x4: the 8x8 images of these
# cases reach 4x4 after one down-sampling.
_BASE_MODEL = {**NCSNPP, "attn_resolutions": (4,)}

# name -> (model fields, sde, continuous, image size). The NCSN++ cases together cover Fourier /
# positional embeddings, FIR / plain resampling, BigGAN / DDPM blocks, progressive none /
# output_skip / residual, progressive_input none / input_skip / residual, sum / cat, conditional
# or not, scale_by_sigma with sigma (continuous VE) and with level indices (discrete VE), and the
# fused FIR up-sampling convolution (DDPM blocks with FIR) that the PyTorch port cannot run.
CASES = {
  "flax_ncsnpp_ve_continuous": ({**_BASE_MODEL}, VE, True, 8),
  "flax_ddpmpp_vp_continuous": (
    {
      **_BASE_MODEL,
      "fir": False,
      "progressive_input": "none",
      "embedding_type": "positional",
      "scale_by_sigma": False,
    },
    VP,
    True,
    8,
  ),
  "flax_ncsnpp_skip_vp_discrete": (
    {
      **_BASE_MODEL,
      "progressive": "output_skip",
      "progressive_input": "input_skip",
      "embedding_type": "positional",
      "scale_by_sigma": False,
    },
    VP,
    False,
    8,
  ),
  "flax_ncsnpp_ddpmblocks_fir_unconditional": (
    {
      **_BASE_MODEL,
      "resblock_type": "ddpm",
      "progressive": "residual",
      "progressive_input": "input_skip",
      "conditional": False,
      "skip_rescale": False,
    },
    VE,
    True,
    8,
  ),
  "flax_ncsnpp_ve_discrete_cat": (
    {
      **_BASE_MODEL,
      "fir": False,
      "progressive": "output_skip",
      "progressive_input": "input_skip",
      "progressive_combine": "cat",
      "embedding_type": "positional",
    },
    VE,
    False,
    8,
  ),
  # DDPM U-Net, discrete VP; its GroupNorms have 32 groups, so nf = 32 (one resolution to stay small).
  "flax_ddpm_vp_discrete": (
    dict(
      name="ddpm",
      nf=32,
      ch_mult=(1,),
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
    8,
  ),
  # The original's NCSNv2 and NCSN (level index input, discrete VE on 10 levels).
  "flax_ncsnv2_ve_discrete": (dict(REFINENET), VE_SMALL, False, 16),
  "flax_ncsn_ve_discrete": (
    {**REFINENET, "name": "ncsn", "scale_by_sigma": False},
    VE_SMALL,
    False,
    16,
  ),
}


# --- Shims ---------------------------------------------------------------------------------------


def _install_shims() -> None:
  """Lets the original code (jax 0.2.8 / flax 0.3.1) import and run here, in this process only."""
  import flax
  import flax.linen as nn
  import flax.training.checkpoints  # noqa: F401  (probes for tensorflow when imported: first)
  import jax
  import jax.numpy as jnp
  from flax import struct

  for name in ("tensorflow", "PIL", "PIL.Image"):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["PIL"].Image = sys.modules["PIL.Image"]
  flax.config.update("flax_return_frozendict", True)

  # flax.optim (flax <= 0.5): the state layout its checkpoints hold.
  optim = types.ModuleType("flax.optim")

  @struct.dataclass
  class OptimizerState:
    step: jax.Array
    param_states: object

  @struct.dataclass
  class _AdamParamState:
    grad_ema: jax.Array
    grad_sq_ema: jax.Array

  @struct.dataclass
  class Optimizer:
    optimizer_def: object = struct.field(pytree_node=False)
    state: object = None
    target: object = None

  class Adam:
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
      self.hyper_params = dict(
        learning_rate=learning_rate, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay
      )

    def init_state(self, params):
      states = jax.tree.map(lambda p: _AdamParamState(jnp.zeros_like(p), jnp.zeros_like(p)), params)
      return OptimizerState(jnp.asarray(0, jnp.int32), states)

    def create(self, target):
      return Optimizer(self, self.init_state(target), target)

  optim.Optimizer, optim.OptimizerState, optim.Adam = Optimizer, OptimizerState, Adam
  sys.modules["flax.optim"] = optim
  flax.optim = optim

  # Two-argument initialisers: flax now calls init(key, shape, dtype).
  param = nn.Module.param

  def two_argument_safe_param(self, name, init_fn, *init_args, **kwargs):
    try:
      positional = [
        p
        for p in inspect.signature(init_fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
      ]
      has_var = any(
        p.kind == p.VAR_POSITIONAL for p in inspect.signature(init_fn).parameters.values()
      )
    except (TypeError, ValueError):
      positional, has_var = [], True
    if not has_var and len(positional) == 2:
      original = init_fn

      def init_fn(key, shape, *rest):
        return original(key, shape)

    return param(self, name, init_fn, *init_args, **kwargs)

  nn.Module.param = two_argument_safe_param


def _import_reference(ref_dir: str) -> dict:
  sys.path.insert(0, ref_dir)
  _install_shims()
  import functools

  import jax
  import ml_collections

  import losses
  import sde_lib
  from models import ddpm, ncsnpp, ncsnv2, normalization  # noqa: F401  (register the models)
  from models import utils as mutils

  # The original NCSN's down-sampling residual block calls `self.normalization(h, y)`: a factory
  # that creates the layer and applies it when called with arrays.
  plain = ncsnv2.get_normalization

  def get_normalization(config, conditional=False):
    factory = plain(config, conditional)
    if not conditional:
      return factory

    @functools.wraps(factory)
    def make(*args, **kwargs):
      if args and isinstance(args[0], jax.Array):
        return factory()(*args, **kwargs)
      return factory(*args, **kwargs)

    return make

  ncsnv2.get_normalization = get_normalization
  return dict(ml_collections=ml_collections, losses=losses, sde_lib=sde_lib, mutils=mutils)


# --- Cases ---------------------------------------------------------------------------------------


def _reference_config(ml_collections, model: dict, sde: dict, continuous: bool, image_size: int):
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({"continuous": continuous, "sde": sde["name"]})
  config.data = ml_collections.ConfigDict(
    {"image_size": image_size, "num_channels": CHANNELS, "centered": False}
  )
  m = fixture_cases.reference_model_fields(model, sde)
  m["num_classes"] = sde["N"]
  config.model = ml_collections.ConfigDict(m)
  config.optim = ml_collections.ConfigDict(
    {"optimizer": "Adam", "lr": 2e-4, "beta1": 0.9, "eps": 1e-8, "weight_decay": 0.0}
  )
  config.seed = 42
  return config


def _randomised(tree, rng: np.random.Generator, scale: float):
  """Every leaf plus scale * N(0, 1), rounded to a multiple of QUANTUM (never all-equal)."""
  import jax

  def leaf(a):
    a = np.asarray(a, np.float32)
    value = a + scale * rng.standard_normal(a.shape).astype(np.float32)
    return np.round(value / QUANTUM).astype(np.float32) * np.float32(QUANTUM)

  return jax.tree.map(leaf, tree)


def make_case(
  refs, name: str, model: dict, sde: dict, continuous: bool, size: int, seed: int, out_dir: str
) -> None:
  import jax
  import jax.numpy as jnp
  from flax import serialization

  ml_collections, losses = refs["ml_collections"], refs["losses"]
  sde_lib, mutils = refs["sde_lib"], refs["mutils"]
  config = _reference_config(ml_collections, model, sde, continuous, size)
  rng = jax.random.PRNGKey(config.seed + seed)
  network, model_state, initial = mutils.init_model(rng, config)
  host = np.random.default_rng(seed)
  # Random weights everywhere (init_scale=0 leaves output convolutions at ~zero otherwise), and a
  # distinct EMA, so a swapped target / EMA import fails the test.
  target = jax.tree.map(jnp.asarray, _randomised(initial, host, 0.1))
  params_ema = jax.tree.map(jnp.asarray, _randomised(target, host, 0.05))
  if "GaussianFourierProjection_0" in target:
    # The Fourier W is a param behind stop_gradient: Adam never moves it, so its EMA stays equal.
    params_ema = params_ema.copy(
      {"GaussianFourierProjection_0": target["GaussianFourierProjection_0"]}
    )
  optimizer = losses.get_optimizer(config).create(target)
  step = 5000 + seed
  state = mutils.State(
    step=jnp.asarray(step, jnp.int32),
    optimizer=optimizer,
    lr=config.optim.lr,
    model_state=model_state,
    ema_rate=config.model.ema_rate,
    params_ema=params_ema,
    rng=rng,
  )
  data = serialization.to_bytes(state)
  with open(os.path.join(out_dir, f"{name}.msgpack.gz"), "wb") as f:
    f.write(gzip.compress(data, compresslevel=9, mtime=0))

  x = jnp.asarray(host.uniform(size=(BATCH, size, size, CHANNELS)).astype(np.float32))
  ref_sde = fixture_cases.reference_sde(sde_lib, sde)
  if continuous:
    t = jnp.asarray([0.05, 0.4, 0.93], jnp.float32)
  else:  # times on the discrete grid, as the discrete samplers use them
    n = sde["N"] - 1
    t = jnp.asarray(np.array([n, (5 * n) // 9, n // 9], np.float64) / n, jnp.float32)
  if sde["name"] == "vesde":
    labels = (
      ref_sde.marginal_prob(jnp.zeros_like(x), t)[1]
      if continuous
      else jnp.round((ref_sde.T - t) * (ref_sde.N - 1)).astype(jnp.int32)
    )
  else:
    labels = t * 999 if continuous else t * (ref_sde.N - 1)

  def apply(params):
    return network.apply({"params": params, **model_state}, x, labels, train=False)

  out_raw, out_ema = apply(target), apply(params_ema)
  score_fn = mutils.get_score_fn(
    ref_sde, network, params_ema, model_state, train=False, continuous=continuous
  )
  score = score_fn(x, t)

  our_model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.items()}
  if model["name"] in ("ncsnv2_64", "ncsn"):  # the level table is the SDE's levels
    our_model["num_scales"] = sde["N"]
  np.savez_compressed(
    os.path.join(out_dir, f"{name}.npz"),
    x=np.asarray(x),
    t=np.asarray(t),
    c_noise=np.asarray(labels),
    out_raw=np.asarray(out_raw),
    out_ema=np.asarray(out_ema),
    score_ema=np.asarray(score),
    step=np.int64(step),
    config=json.dumps(
      {
        "model": our_model,
        "sde": sde,
        "continuous": continuous,
        "data": {"image_size": size, "num_channels": CHANNELS, "centered": False},
      }
    ),
  )
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(target))
  print(f"{name}: {count} parameters, step {step}, {len(data)} bytes ({len(data) // 1024} KiB raw)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("reference_dir", help="work tree of yang-song/score_sde")
  parser.add_argument("--only", nargs="*", default=None, help="case names to (re)write")
  parser.add_argument("--out", default=OUT_DIR, help="output directory (default: the fixtures)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  refs = _import_reference(os.path.abspath(args.reference_dir))
  for seed, (name, (model, sde, continuous, size)) in enumerate(CASES.items()):
    if args.only and name not in args.only:
      continue
    make_case(refs, name, model, sde, continuous, size, seed, args.out)


if __name__ == "__main__":
  main()
