"""Imports the paper's released checkpoints (score_sde_pytorch `.pth`, score_sde Flax) into this project.

`import_checkpoint(config, workdir, checkpoint_path)` reads a released checkpoint, maps every tensor
onto this project's parameter tree for `config`'s network, and writes an ordinary checkpoint of this
project (orbax, with the config as JSON) holding the raw and the EMA parameters and the step, so
that sampling, evaluation and likelihood modes run on it unchanged.

Formats, detected from the file's first bytes (not its name):
- PyTorch (`checkpoint_<n>.pth`): a zip (or legacy) pickle read by `pth_reader.load_pth`, which
  rebuilds arrays and plain containers only. Layout: {"model": state_dict with keys
  "module.<path>", "ema": {"decay", "num_updates", "shadow_params": [tensor, ...]},
  "optimizer": ..., "step": int}. The EMA is a list in parameter order (parameters that require
  gradients only).
- Flax (`checkpoint_<n>`): `flax.serialization.to_bytes` of the original's State, msgpack:
  {"step", "optimizer": {"target": params, "state": ...}, "lr", "model_state", "ema_rate",
  "params_ema", "rng"}; parameter names are the Flax auto-names our modules reproduce.

The mapping is data (`LEAF_RULES`, `TORCH_MODULE_RENAMES`, `TORCH_TOP_RENAMES`, `TORCH_BUFFERS`,
`FLAX_REFUSED_LAYOUTS`) used the same way for every architecture:
- each leaf of our tree (by its name and rank) names the reference leaf it comes from and the
  layout change: conv kernels HWIO <- OIHW, dense kernels (in, out) <- (out, in), GroupNorm
  scale / bias <- weight / bias (or the (1, 1, 1, C) arrays of old Flax checkpoints), NIN `W` / `b`
  and the Fourier `W` unchanged (the latter goes to the "constants" collection), InstanceNorm++
  alpha / gamma / beta unchanged, level embeddings (levels, features) <- nn.Embedding weight;
- PyTorch module paths, NCSN++ / DDPM++ / DDPM (`PTH_ORDERED_MODELS`): the port keeps the
  network's top-level layers in one ModuleList (`all_modules.<i>`) in creation order, which is the
  order in which our network creates its top-level submodules (recorded while tracing it), so the
  i-th of our top-level modules that owns variables is the i-th `all_modules` entry that owns
  tensors; inside it the port's attribute names are the Flax auto-names (`GroupNorm_0`, `Conv_1`,
  `NIN_2`, ...);
- PyTorch module paths, NCSNv2 / NCSN (`PTH_NAMED_MODELS`): the port names its layers as
  attributes; each of our module names is rewritten by `TORCH_MODULE_RENAMES` (`res2_0` ->
  `res2.0`, `adapt_1` -> `adapt_convs.1`, `conv_0_1` -> `1_2_conv`, `conv2` -> `conv2` or
  `conv2.conv` inside a down-sampling block, ...) and, for the 256-pixel NCSNv2 whose extra stage
  the port calls `res31` / `refine31`, by `TORCH_TOP_RENAMES` first;
- Flax: the original's parameter names are the Flax auto-names our NCSN++ / DDPM++ / DDPM modules
  reproduce, so a name maps to itself. The original JAX code's own NCSNv2 / NCSN are other networks
  than the NCSN authors' (and the port's) implemented here (`FLAX_REFUSED_LAYOUTS` says how): their
  checkpoints are refused with that reason;
- buffers of the port (`sigmas`) are checked against the values this project derives from the config.
Every shape is checked. Every reference tensor must be used and every leaf of ours filled:
anything else is a `CheckpointImportError` naming it (and both shapes for a shape mismatch).

Tested against the reference networks (tests/test_checkpoint_import.py): the port's NCSN++ /
DDPM++ option combinations, DDPM, NCSNv2 and NCSN (.pth, tools/make_import_fixtures.py) and the
original JAX code's NCSN++ / DDPM++ option combinations and DDPM, as its training loop writes them
(tools/make_flax_fixtures.py): same outputs (raw and EMA weights) and scores to 1e-5.

Nothing is written until the whole checkpoint has been read and mapped; a failure while writing
removes what was written, so an error never leaves a partial checkpoint in the work directory.

The fixed Fourier weights of NCSN++ are not trained parameters: they are written next to the
checkpoints as `<workdir>/checkpoints/constants.msgpack` ({"constants": {...}}) and read back with
`load_constants(workdir)`, to be passed as `get_score_fn(..., constants=...)`.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

import checkpoints
import losses
import pth_reader
import sde_lib
from models import ncsnv2
from models import utils as mutils

__all__ = [
  "CheckpointImportError",
  "LEAF_RULES",
  "detect_format",
  "import_checkpoint",
  "load_constants",
  "map_flax",
  "map_pth",
  "target_tree",
]

CONSTANTS_FILE = "constants.msgpack"

Path = tuple[str, ...]


class CheckpointImportError(ValueError):
  """A released checkpoint that does not match the config's network, or cannot be read."""


# --- The mapping, as data ------------------------------------------------------------------------


def _identity(a: np.ndarray) -> np.ndarray:
  return a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
  return np.transpose(a, (2, 3, 1, 0))


def _transpose(a: np.ndarray) -> np.ndarray:
  return a.T


def _hwio_to_oihw(a: np.ndarray) -> np.ndarray:
  return np.transpose(a, (3, 2, 0, 1))


Rule = tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]

# (our leaf name, our rank) -> (PyTorch leaf name, PyTorch array -> ours, ours -> PyTorch).
# Rank None: any rank.
LEAF_RULES: dict[tuple[str, int | None], Rule] = {
  ("kernel", 4): ("weight", _oihw_to_hwio, _hwio_to_oihw),  # nn.Conv2d: OIHW -> HWIO
  ("weight", 4): ("weight", _oihw_to_hwio, _hwio_to_oihw),  # FIR up/down-sampling Conv2d
  ("kernel", 2): ("weight", _transpose, _transpose),  # nn.Linear: (out, in) -> (in, out)
  ("scale", 1): ("weight", _identity, _identity),  # GroupNorm / norm layers
  ("bias", None): ("bias", _identity, _identity),
  ("W", None): ("W", _identity, _identity),  # NIN (in, out) as ours; Fourier frequencies
  ("b", None): ("b", _identity, _identity),
  ("alpha", 1): ("alpha", _identity, _identity),  # InstanceNorm++ (C,)
  ("gamma", 1): ("gamma", _identity, _identity),
  ("beta", 1): ("beta", _identity, _identity),
  ("embedding", 2): ("weight", _identity, _identity),  # nn.Embedding (levels, features) as ours
}


def _sigmas_buffer(config: Any) -> np.ndarray:
  sde = config.sde
  return np.exp(np.linspace(np.log(float(sde.sigma_max)), np.log(float(sde.sigma_min)), int(sde.N)))


def _check_sigmas(value: np.ndarray, config: Any) -> str | None:
  """The port's `sigmas` buffer: the geometric noise levels of config.sde (unused by VP models)."""
  if "sigma_min" not in config.sde:
    return None  # VP / sub-VP configs: the buffer comes from the model defaults, never used.
  expected = _sigmas_buffer(config)
  if value.shape != expected.shape or not np.allclose(value, expected, rtol=1e-5):
    return (
      f"buffer 'sigmas' {value.shape} [{value.ravel()[:1]}...] differs from the levels of "
      f"config.sde (sigma_min, sigma_max, N) {expected.shape}"
    )
  return None


# PyTorch buffers (top-level name -> check against the config): consumed, not mapped.
TORCH_BUFFERS: dict[str, Callable[[np.ndarray, Any], str | None]] = {"sigmas": _check_sigmas}

# Reference tensors the port creates but its forward pass never reads: (when, key prefix inside a
# top-level module). Unconditional NCSN++ still builds every residual block's time-embedding Dense.
TORCH_UNUSED: tuple[tuple[Callable[[Any], bool], str], ...] = (
  (lambda config: not config.model.get("conditional", True), "Dense_0."),
)

# Networks whose PyTorch port keeps its layers in one `all_modules` list in creation order, so that
# the order-based correspondence above applies (and is tested against the port's networks).
PTH_ORDERED_MODELS = ("ncsnpp", "ddpm")


def _one_based(kind: str) -> Callable[[re.Match], tuple[str, ...]]:
  return lambda m: (f"{int(m[1]) + 1}_{int(m[2]) + 1}_{kind}",)


# Networks whose port names its layers as attributes (the RefineNets: NCSNv2, NCSN). Each of our
# module names (one path component, whole-name match) becomes the port's dotted name; where a rule
# gives several candidates, the one present in the file is used (exactly one must be). First
# matching rule wins; a name no rule matches is the port's name unchanged (begin_conv, conv1,
# normalize2, msf, crp, normalizer, end_conv, ...).
TORCH_MODULE_RENAMES: tuple[tuple[str, Callable[[re.Match], tuple[str, ...]]], ...] = (
  (r"res(\d+)_(\d+)", lambda m: (f"res{m[1]}.{m[2]}",)),  # encoder stages: nn.ModuleList
  (r"adapt_(\d+)", lambda m: (f"adapt_convs.{m[1]}",)),  # RefineBlock's input RCUs
  (r"output", lambda m: ("output_convs",)),
  (r"conv_(\d+)_(\d+)", _one_based("conv")),  # RCU attributes "1_1_conv", "1_1_norm", ...
  (r"norm_(\d+)_(\d+)", _one_based("norm")),
  (r"conv_(\d+)", lambda m: (f"convs.{m[1]}",)),  # MSF / CRP lists
  (r"norm_(\d+)", lambda m: (f"norms.{m[1]}",)),
  # A residual block that halves the resolution wraps these in ConvMeanPool(.conv); dilated ones
  # do not.
  (r"conv2|shortcut", lambda m: (m[0], f"{m[0]}.conv")),
)

# Per-architecture renames of our top-level modules, before TORCH_MODULE_RENAMES: the port's
# 256-pixel NCSNv2 inserts its extra stage as "res31" / "refine31" instead of renumbering.
TORCH_TOP_RENAMES: dict[str, dict[str, str]] = {
  "ncsnv2_256": {
    **{f"res{i}_{j}": f"res{n}.{j}" for i, n in ((4, 31), (5, 4), (6, 5)) for j in (0, 1)},
    **{f"refine{i}": f"refine{n}" for i, n in ((3, 31), (4, 3), (5, 4), (6, 5))},
  },
}

PTH_NAMED_MODELS = ("ncsnv2", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "ncsn")
PTH_MODELS = PTH_ORDERED_MODELS + PTH_NAMED_MODELS

# Our variable collections that hold released tensors (params first: the EMA covers only those).
_COLLECTIONS = ("params", "constants")


# --- Our target tree -----------------------------------------------------------------------------


def target_tree(config: Any) -> tuple[nn.Module, dict[str, Any], list[str]]:
  """The network of `config`, its variables' shapes, and its top-level submodules in creation order.

  Returns:
    (model, {collection: nested dict of jax.ShapeDtypeStruct}, [top-level module name, ...]).
  """
  model = mutils.get_model(config)
  sde = sde_lib.get_sde(config.sde)
  continuous = bool(config.training.continuous)
  shape = (
    1,
    int(config.data.image_size),
    int(config.data.image_size),
    int(config.data.num_channels),
  )
  order: list[str] = []

  def record(next_fn, args, kwargs, context):
    scope = context.module.scope
    if scope is not None and len(scope.path) == 1 and scope.path[0] not in order:
      order.append(scope.path[0])
    return next_fn(*args, **kwargs)

  def init(key):
    with nn.intercept_methods(record):
      return mutils.init_variables(key, model, sde, shape, continuous)

  variables = jax.eval_shape(init, jax.random.key(0))
  return model, dict(variables), order


def _our_leaves(variables: Mapping[str, Any]) -> dict[Path, tuple[str, tuple[int, ...]]]:
  """{(module, ..., leaf): (collection, shape)} for the collections that released files hold."""
  leaves = {}
  for collection in _COLLECTIONS:
    for path, leaf in flatten_dict(dict(variables.get(collection, {}))).items():
      leaves[tuple(path)] = (collection, tuple(leaf.shape))
  return leaves


def _rule(path: Path, ndim: int) -> Rule:
  name = path[-1]
  rule = LEAF_RULES.get((name, ndim)) or LEAF_RULES.get((name, None))
  if rule is None:
    raise CheckpointImportError(
      f"No mapping rule for our leaf {'/'.join(path)} (rank {ndim}): add one to LEAF_RULES."
    )
  return rule


# --- PyTorch -------------------------------------------------------------------------------------


def _torch_groups(state_dict: Mapping[str, np.ndarray]) -> tuple[list[tuple[str, dict]], dict]:
  """Splits a state_dict into ordered top-level module groups and top-level tensors (buffers).

  `all_modules.<i>.<rest>` -> group "all_modules.<i>" with key <rest>; `<name>.<rest>` -> group
  "<name>"; a key with no dot is a top-level tensor.
  """
  groups: dict[str, dict[str, np.ndarray]] = {}
  top: dict[str, np.ndarray] = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if len(parts) == 1:
      top[key] = value
      continue
    n = 2 if parts[0] == "all_modules" and len(parts) > 2 else 1
    groups.setdefault(".".join(parts[:n]), {})[".".join(parts[n:])] = value
  return list(groups.items()), top


def _take(
  value: np.ndarray, shape: tuple[int, ...], transform: Callable, our_name: str, torch_key: str
) -> np.ndarray:
  """A reference tensor in our layout, its shape checked against our leaf's."""
  if value.shape != shape and value.size == int(np.prod(shape)) and value.ndim > len(shape):
    value = value.reshape(shape)  # e.g. GroupNorm (1, 1, 1, C)
  mapped = transform(value)
  if mapped.shape != shape:
    raise CheckpointImportError(
      f"Shape mismatch at our {our_name}: expects {shape}, reference '{torch_key}' "
      f"has {value.shape} (-> {mapped.shape}); a checkpoint of another config?"
    )
  return np.ascontiguousarray(mapped, dtype=np.float32)


def _map_by_order(
  config: Any, sd: Mapping[str, np.ndarray], variables: Mapping[str, Any], order: list[str]
) -> tuple[dict[Path, np.ndarray], dict[Path, str]]:
  """The all_modules networks: our i-th top-level module with variables is `all_modules.<i>`."""
  ours = _our_leaves(variables)
  by_module: dict[str, dict[Path, tuple[str, tuple[int, ...]]]] = {}
  for path, info in ours.items():
    by_module.setdefault(path[0], {})[path[1:]] = info
  modules = [name for name in order if name in by_module]
  missing_order = sorted(set(by_module) - set(modules))
  if missing_order:  # a module holding variables that was never called: cannot be ordered
    raise CheckpointImportError(f"Modules {missing_order} were not traced in call order.")
  groups, _ = _torch_groups(sd)

  flat: dict[Path, np.ndarray] = {}
  torch_key_of: dict[Path, str] = {}
  for i, (group, tensors) in enumerate(groups):
    if i >= len(modules):
      first = next(iter(tensors))
      raise CheckpointImportError(
        f"Reference tensor '{group}.{first}' {tensors[first].shape} has no counterpart: the "
        f"checkpoint has more layers than the config's network ({len(modules)} modules with "
        "weights); a checkpoint of another architecture or config?"
      )
    module = modules[i]
    unused = dict(tensors)
    for sub, (collection, shape) in by_module[module].items():
      torch_leaf, transform, _ = _rule(sub, len(shape))
      torch_key = ".".join((*sub[:-1], torch_leaf))
      our_name = "/".join((module, *sub))
      if torch_key not in unused:
        raise CheckpointImportError(
          f"Our {collection} leaf {our_name} {shape} expects reference tensor "
          f"'{group}.{torch_key}', which is missing (that module has "
          f"{sorted(tensors)}): a checkpoint of another architecture or config?"
        )
      value = unused.pop(torch_key)
      torch_key = f"{group}.{torch_key}"
      flat[(collection, module, *sub)] = _take(value, shape, transform, our_name, torch_key)
      torch_key_of[(collection, module, *sub)] = torch_key
    for when, prefix in TORCH_UNUSED:
      if when(config):
        unused = {k: v for k, v in unused.items() if not k.startswith(prefix)}
    if unused:
      first = next(iter(unused))
      raise CheckpointImportError(
        f"Reference tensor '{group}.{first}' {unused[first].shape} is not used by our module "
        f"{module}: a checkpoint of another architecture or config?"
      )
  if len(groups) < len(modules):
    module = modules[len(groups)]
    sub, (collection, shape) = next(iter(by_module[module].items()))
    raise CheckpointImportError(
      f"Our {collection} leaf {'/'.join((module, *sub))} {shape} has no reference tensor: the "
      f"checkpoint has fewer layers ({len(groups)}) than the network ({len(modules)})."
    )
  return flat, torch_key_of


def _architecture(config: Any) -> str:
  """config.model.name, with NCSNv2's depth made explicit (the port names depths differently)."""
  name = str(config.model.name)
  if name == "ncsnv2":
    return f"ncsnv2_{ncsnv2.variant_for_image_size(int(config.data.image_size))}"
  return name


def torch_names(config: Any, path: Path) -> list[str]:
  """The port's candidate state_dict keys (without "module.") for our module path + leaf name.

  Applies TORCH_TOP_RENAMES to the top-level module, TORCH_MODULE_RENAMES to every module name,
  and the leaf's LEAF_RULES name; a leaf of rank r is looked up with `_rule(path, r)` by the
  caller, so `path[-1]` here is already the port's leaf name.
  """
  top = TORCH_TOP_RENAMES.get(_architecture(config), {})
  options: list[tuple[str, ...]] = []
  for depth, name in enumerate(path[:-1]):
    if depth == 0 and name in top:
      options.append((top[name],))
      continue
    for pattern, rename in TORCH_MODULE_RENAMES:
      match = re.fullmatch(pattern, name)
      if match:
        options.append(rename(match))
        break
    else:
      options.append((name,))
  return [".".join((*parts, path[-1])) for parts in itertools.product(*options)]


def _map_by_name(
  config: Any, sd: Mapping[str, np.ndarray], variables: Mapping[str, Any]
) -> tuple[dict[Path, np.ndarray], dict[Path, str]]:
  """The RefineNets: each of our leaves names its port tensor through the rename tables."""
  flat: dict[Path, np.ndarray] = {}
  torch_key_of: dict[Path, str] = {}
  used: set[str] = set()
  for path, (collection, shape) in _our_leaves(variables).items():
    torch_leaf, transform, _ = _rule(path, len(shape))
    candidates = torch_names(config, (*path[:-1], torch_leaf))
    found = [key for key in candidates if key in sd]
    our_name = "/".join(path)
    if len(found) != 1:
      what = "is missing" if not found else f"is ambiguous ({found})"
      raise CheckpointImportError(
        f"Our {collection} leaf {our_name} {shape} expects reference tensor "
        f"'{' or '.join(candidates)}', which {what}: a checkpoint of another architecture or "
        "config?"
      )
    key = found[0]
    used.add(key)
    flat[(collection, *path)] = _take(sd[key], shape, transform, our_name, key)
    torch_key_of[(collection, *path)] = key
  for key, value in sd.items():
    if "." in key and key not in used:
      raise CheckpointImportError(
        f"Reference tensor '{key}' {value.shape} is not used by the config's network: a "
        "checkpoint of another architecture or config?"
      )
  return flat, torch_key_of


def map_pth(
  config: Any, state_dict: Mapping[str, Any], ema_list: list[Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """Maps a score_sde_pytorch model state_dict (and EMA list) onto our variables.

  Args:
    config: the experiment config whose network the checkpoint is for.
    state_dict: {"module.<path>" or "<path>": array}, in the file's order.
    ema_list: the EMA's `shadow_params` (parameter order, trainable parameters only), or None.

  Returns:
    ({"params": ..., "constants": ...} from the model weights, the same from the EMA or None); the
    EMA's constants are the model's (they are not trained).

  Raises:
    CheckpointImportError naming the first tensor that is unmapped, unused or of the wrong shape.
  """
  if config.model.name not in PTH_MODELS:
    raise CheckpointImportError(
      f"config.model.name = {config.model.name!r}: importing score_sde_pytorch checkpoints is "
      f"supported for {', '.join(PTH_MODELS)} (Flax checkpoints map by name for every model)."
    )
  _, variables, order = target_tree(config)

  sd = {}
  for key, value in state_dict.items():
    if not isinstance(value, np.ndarray):
      raise CheckpointImportError(f"model entry {key!r} is a {type(value).__name__}, not an array.")
    sd[key[len("module.") :] if key.startswith("module.") else key] = value
  top = {key: value for key, value in sd.items() if "." not in key}
  for name, value in top.items():
    if name not in TORCH_BUFFERS:
      raise CheckpointImportError(f"Reference tensor {name!r} {value.shape} has no mapping.")
    problem = TORCH_BUFFERS[name](value, config)
    if problem:
      raise CheckpointImportError(f"Reference {problem}: a checkpoint of another config?")

  if config.model.name in PTH_ORDERED_MODELS:
    flat, torch_key_of = _map_by_order(config, sd, variables, order)
  else:
    flat, torch_key_of = _map_by_name(config, sd, variables)

  model_vars = _unflatten(flat)
  if ema_list is None:
    return model_vars, None

  # EMA: the port's trainable parameters in state_dict order: every tensor but the buffers and
  # the constants (fixed Fourier weights), including the never-read ones of TORCH_UNUSED.
  path_of = {key: path for path, key in torch_key_of.items()}
  trainable = [
    (path_of.get(key), key)
    for key in sd
    if key not in top and not (key in path_of and path_of[key][0] != "params")
  ]
  if len(ema_list) != len(trainable):
    raise CheckpointImportError(
      f"The EMA holds {len(ema_list)} tensors but the model has {len(trainable)} trainable "
      "parameters: a checkpoint of another config, or a corrupt EMA?"
    )
  ema_flat = {k: v for k, v in flat.items() if k[0] != "params"}
  for j, ((path, torch_key), value) in enumerate(zip(trainable, ema_list, strict=True)):
    if not isinstance(value, np.ndarray) or value.shape != sd[torch_key].shape:
      got = getattr(value, "shape", type(value).__name__)
      raise CheckpointImportError(
        f"EMA tensor {j} has shape {got} but parameter {j} in order, '{torch_key}', has "
        f"{sd[torch_key].shape}."
      )
    if path is None:  # a TORCH_UNUSED tensor
      continue
    _, transform, _ = _rule(path[1:], len(flat[path].shape))
    ema_flat[path] = np.ascontiguousarray(
      transform(value.reshape(sd[torch_key].shape)), dtype=np.float32
    )
  return model_vars, _unflatten(ema_flat)


def _unflatten(flat: Mapping[Path, np.ndarray]) -> dict[str, Any]:
  return {k: v for k, v in unflatten_dict(dict(flat)).items()}


def torch_layout(config: Any) -> dict[str, tuple[int, ...]]:
  """The score_sde_pytorch state_dict layout of `config`'s network, through the inverse mapping.

  {"module.<key>": shape} in state_dict order: the `sigmas` buffer (levels of config.sde, or of
  the VE defaults), then `all_modules.<i>.<sub>.<leaf>` for our i-th top-level module that holds
  variables (the port's numbering also counts parameter-free layers; readers only use the order).
  Unconditional networks' never-read Dense_0 tensors (TORCH_UNUSED) are not produced.
  """
  _, variables, order = target_tree(config)
  ours = _our_leaves(variables)
  by_module: dict[str, list[tuple[Path, tuple[int, ...]]]] = {}
  for path, (_, shape) in ours.items():
    by_module.setdefault(path[0], []).append((path[1:], shape))
  n = int(config.sde.N)
  layout = {"module.sigmas": (n,)}
  for i, module in enumerate(name for name in order if name in by_module):
    for sub, shape in by_module[module]:
      torch_leaf, _, inverse = _rule(sub, len(shape))
      key = ".".join(("module", "all_modules", str(i), *sub[:-1], torch_leaf))
      layout[key] = inverse(np.empty(shape, np.uint8)).shape
  return layout


def random_torch_checkpoint(config: Any, seed: int = 0) -> dict[str, Any]:
  """A checkpoint in the released .pth layout with random weights, for tests and benchmarks.

  {"model": state_dict, "ema": {"decay", "num_updates", "shadow_params"}, "optimizer": {}, "step"};
  the `sigmas` buffer holds config.sde's levels (VE) and the Fourier W is not in the EMA.
  """
  rng = np.random.default_rng(seed)
  model, ema = {}, []
  for key, shape in torch_layout(config).items():
    if key == "module.sigmas":
      sde = config.sde
      model[key] = (
        _sigmas_buffer(config).astype(np.float32)
        if "sigma_min" in sde
        else np.ones(shape, np.float32)
      )
      continue
    model[key] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if not key.endswith(".W") or len(shape) != 1:  # the fixed Fourier W is not trained
      ema.append(model[key] + np.float32(0.01))
  return {
    "optimizer": {},
    "model": model,
    "ema": {"decay": 0.999, "num_updates": 10, "shadow_params": ema},
    "step": 10,
  }


# --- Flax ----------------------------------------------------------------------------------------

# Flax layouts that name parameters like ours cannot describe: (our model names, top-level names
# that identify the layout, why it is refused). The original score_sde JAX code's NCSNv2 / NCSN
# (auto-named ResidualBlock_0, RefineBlock_0, ...) are not the networks of the NCSN authors and
# of score_sde_pytorch that this project implements, so their outputs could not be reproduced.
FLAX_REFUSED_LAYOUTS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
  (
    PTH_NAMED_MODELS,
    ("ResidualBlock_0", "ConditionalResidualBlock_0", "RefineBlock_0", "CondRefineBlock_0"),
    "a checkpoint of the original score_sde JAX code's NCSNv2 / NCSN, which are other networks "
    "than the NCSN authors' (and score_sde_pytorch's) implemented here: in the original the third "
    "RefineBlock of the 64-pixel networks is 2 nf wide (nf here), bilinear up-sampling uses "
    "half-pixel centres (aligned corners here) and InstanceNorm++ standardises the channel means "
    "by their biased variance (unbiased here). Its outputs cannot be reproduced, so it is not "
    "imported; score_sde_pytorch .pth checkpoints of NCSNv2 / NCSN are.",
  ),
)


def map_flax(config: Any, tree: Mapping[str, Any], which: str) -> dict[str, Any]:
  """Maps a Flax parameter tree of the original code (`optimizer.target` or `params_ema`).

  Names are our own; the Fourier `W` moves from params to "constants", GroupNorm (1, 1, 1, C)
  arrays become (C,). Every leaf must be used and every shape match.
  """
  for models, markers, reason in FLAX_REFUSED_LAYOUTS:
    if config.model.name in models and any(name in tree for name in markers):
      raise CheckpointImportError(f"The checkpoint's {which} is {reason}")
  _, variables, _ = target_tree(config)
  ours = _our_leaves(variables)
  theirs = {tuple(p): np.asarray(v) for p, v in flatten_dict(dict(tree)).items()}
  flat = {}
  for path, (collection, shape) in ours.items():
    name = "/".join(path)
    if path not in theirs:
      raise CheckpointImportError(
        f"Our {collection} leaf {name} {shape} is missing from the checkpoint's {which}: a "
        "checkpoint of another architecture or config?"
      )
    value = theirs.pop(path)
    if value.shape != shape and value.size == int(np.prod(shape)) and value.ndim > len(shape):
      value = value.reshape(shape)
    if value.shape != shape:
      raise CheckpointImportError(
        f"Shape mismatch at {name}: ours {shape}, the checkpoint's {which} has {value.shape}."
      )
    flat[(collection, *path)] = np.ascontiguousarray(value, dtype=np.float32)
  if theirs:
    path = next(iter(theirs))
    raise CheckpointImportError(
      f"Checkpoint tensor {which}/{'/'.join(path)} {theirs[path].shape} is not used by the "
      "config's network: a checkpoint of another architecture or config?"
    )
  return _unflatten(flat)


# --- Reading files -------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
  """ "pth" (zip or legacy pickle) or "flax" (msgpack map), from the file's first bytes."""
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(b"PK\x03\x04"):
    return "pth"
  if len(head) >= 3 and head[0] == 0x80 and head[1] <= 5 and head[2] == 0x8A:
    return "pth"  # legacy torch.save: PROTO, then the LONG1 magic number
  if head and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
    return "flax"
  raise CheckpointImportError(
    f"{os.fspath(path)} is neither a PyTorch .pth (zip / pickle) nor a Flax msgpack checkpoint "
    f"(first bytes {head!r})."
  )


def read_checkpoint(config: Any, path: str | os.PathLike) -> tuple[dict, dict, int]:
  """Reads and maps a released checkpoint: (model variables, EMA variables, step)."""
  fmt = detect_format(path)
  if fmt == "pth":
    try:
      ckpt = pth_reader.load_pth(path)
    except pth_reader.PthError as e:
      raise CheckpointImportError(f"Cannot read {os.fspath(path)}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
      raise CheckpointImportError(
        f"{os.fspath(path)} is a .pth without a 'model' entry (keys: "
        f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}): not a released "
        "score_sde_pytorch checkpoint."
      )
    ema = ckpt.get("ema")
    ema_list = None
    if ema is not None:
      if not isinstance(ema, dict) or not isinstance(ema.get("shadow_params"), list | tuple):
        raise CheckpointImportError("The checkpoint's 'ema' has no 'shadow_params' list.")
      ema_list = list(ema["shadow_params"])
    model_vars, ema_vars = map_pth(config, ckpt["model"], ema_list)
    step = int(np.asarray(ckpt.get("step", 0)))
  else:
    with open(path, "rb") as f:
      data = f.read()
    try:
      state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types for truncated / corrupt data
      raise CheckpointImportError(f"Cannot read {os.fspath(path)} as a Flax checkpoint: {e}") from e
    try:
      target = state["optimizer"]["target"]
    except (KeyError, TypeError) as e:
      raise CheckpointImportError(
        f"{os.fspath(path)} has no optimizer/target: not a released score_sde checkpoint."
      ) from e
    model_vars = map_flax(config, target, "optimizer/target")
    ema_vars = (
      map_flax(config, state["params_ema"], "params_ema") if "params_ema" in state else None
    )
    step = int(np.asarray(state.get("step", 0)))
  if ema_vars is None:
    logging.warning("The checkpoint has no EMA: its raw weights are used as the EMA too.")
    ema_vars = model_vars
  elif "constants" in model_vars:
    ema_constants = ema_vars.get("constants")
    if ema_constants is not None and not all(
      np.array_equal(a, b)
      for a, b in zip(
        jax.tree.leaves(ema_constants), jax.tree.leaves(model_vars["constants"]), strict=True
      )
    ):  # never in a trained checkpoint: these are not trained, so their EMA equals them
      logging.warning("The EMA's fixed constants differ from the model's: the model's are used.")
    ema_vars["constants"] = model_vars["constants"]
  return model_vars, ema_vars, step


# --- Writing -------------------------------------------------------------------------------------


def load_constants(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The imported non-trainable collections ({"constants": ...}) of `workdir`, or None."""
  path = os.path.join(os.fspath(workdir), "checkpoints", CONSTANTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    restored = serialization.msgpack_restore(f.read())
  return jax.tree.map(jnp.asarray, restored)


def import_checkpoint(config: Any, workdir: str | os.PathLike, checkpoint_path: str) -> int:
  """Imports a released checkpoint into `<workdir>/checkpoints` as this project's train state.

  Writes the step's orbax checkpoint (params = the raw weights, ema_params = the EMA, opt_state
  freshly initialised, the config as JSON) and, when the network has fixed constants (NCSN++'s
  Fourier weights), `<workdir>/checkpoints/constants.msgpack`.

  Returns:
    The imported step.

  Raises:
    CheckpointImportError: unreadable file, or one that does not fit `config`'s network (the error
      names the tensor). FileExistsError: `workdir` already holds checkpoints. Nothing is left in
      `workdir` by a failed import.
  """
  model_vars, ema_vars, step = read_checkpoint(config, checkpoint_path)  # before touching workdir
  directory = os.path.join(os.fspath(workdir), "checkpoints")
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(
      f"{directory} already holds checkpoints: import into an empty work directory."
    )
  # Host (numpy) arrays go to orbax as they are: no device copies of the weights.
  params = model_vars["params"]
  state = losses.TrainState(
    step=np.asarray(step, np.int32),
    params=params,
    opt_state=losses.get_optimizer(config.optim).init(params),
    ema_params=ema_vars["params"],
  )
  created = [p for p in (os.fspath(workdir), directory) if not os.path.exists(p)]
  try:
    os.makedirs(directory, exist_ok=True)
    if "constants" in model_vars:
      tmp = os.path.join(directory, CONSTANTS_FILE + ".tmp")
      with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize({"constants": model_vars["constants"]}))
      os.replace(tmp, os.path.join(directory, CONSTANTS_FILE))
    with checkpoints.CheckpointManager(directory) as manager:
      manager.save(step, state, config)
  except BaseException:
    if created:  # remove the directories this call created, with all they hold
      shutil.rmtree(created[0], ignore_errors=True)
    else:  # the (empty) checkpoint directory existed: empty it again
      for name in os.listdir(directory):
        full = os.path.join(directory, name)
        shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
    raise
  logging.info("Imported %s (step %d) into %s.", checkpoint_path, step, directory)
  return step
