"""Checkpoints of the training state with orbax-checkpoint: save, restore, resume.

Layout: one orbax `CheckpointManager` over one directory, usually `<workdir>/checkpoints`:

    checkpoints/
      <step>/state/              the state pytree (step, params, opt_state, ema_params, ...): any
                                 pytree of arrays, including global jax.Arrays sharded or
                                 replicated over a mesh (each host writes its part)
      <step>/config/metadata     the experiment config as JSON (`config.to_json_best_effort()`)
      <step>/manifest/metadata   shape, dtype and CRC-32 of every array leaf of the state
      corrupted/<step>/          checkpoints that failed to restore, moved aside, never deleted

Which checkpoints are kept. `run_lib` saves at every multiple of
`config.training.snapshot_freq_for_preemption` (frequent, so a pre-empted run loses little) and of
`config.training.snapshot_freq` (`should_save`). The `keep_recent` newest checkpoints are kept
(default 2, so the one before the newest is there if the newest proves bad), plus every multiple of
`keep_every` (= snapshot_freq: the periodic snapshots that evaluation walks through; at most
`max_to_keep` of them, default all). Older pre-emption checkpoints are rotated away by orbax.

Atomicity and corruption. Orbax writes each checkpoint into a temporary directory and renames it
when complete, so a crash mid-write leaves the previous checkpoints intact (the temporary directory
is ignored). On restore, the manifest is checked first: a state built from a config that does not
match the checkpoint (other shapes or leaves) is a `CheckpointMismatchError` naming the leaf. Then
the arrays are read and their CRC-32 compared with the manifest, because orbax reads some damaged
array files without complaint. `restore_latest` falls back from a checkpoint that fails to the
previous one with a logged warning, and moves the failed ones to `corrupted/` (so new checkpoints
can take their step numbers); if none restores it raises `CheckpointError` and moves nothing.

Saving is asynchronous: `save` returns once the arrays are copied to host memory; use the manager
as a context manager (or call `close`) so pending writes finish before the process exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import threading
import weakref
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

import parallel

_STATE, _CONFIG, _MANIFEST = "state", "config", "manifest"
_ITEMS = (_STATE, _CONFIG, _MANIFEST)
CORRUPTED = "corrupted"
MANIFEST_FORMAT = 1


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored."""


class CheckpointMismatchError(CheckpointError):
  """The state to restore into does not have the checkpoint's leaves or shapes."""


def _host_array(x: Any) -> np.ndarray | None:
  """A host copy of a leaf whose whole value this process holds, else None."""
  if isinstance(x, jax.Array):
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    return None
  if isinstance(x, np.ndarray | np.generic):
    return np.asarray(x)
  return None


def _crc32(x: Any) -> int | None:
  array = _host_array(x)
  if array is None:
    return None
  return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _manifest(state: Any) -> dict[str, Any]:
  """{"format": 1, "leaves": {key path: {"shape", "dtype", "crc32"}}} of the array leaves."""
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      leaves[jax.tree_util.keystr(path)] = {
        "shape": list(leaf.shape),
        "dtype": str(leaf.dtype),
        "crc32": _crc32(leaf),
      }
  return {"format": MANIFEST_FORMAT, "leaves": leaves}


def _config_json(config: Any) -> dict[str, Any]:
  if config is None:
    return {}
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=repr))


def _close_at_exit(ref: weakref.ref) -> None:
  manager = ref()
  if manager is not None:
    manager.close()


class CheckpointManager:
  """Saves and restores the training state in one directory (see the module docstring).

  Args:
    directory: where checkpoints live, e.g. `<workdir>/checkpoints` (created if missing).
    keep_every: keep every checkpoint whose step is a multiple of this (the periodic snapshots);
      None keeps only the `keep_recent` newest.
    max_to_keep: how many of those periodic checkpoints to keep (None: all).
    keep_recent: how many of the newest checkpoints to keep regardless of their step.
    save_every: steps between frequent (pre-emption) checkpoints, for `should_save`.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    keep_every: int | None = None,
    max_to_keep: int | None = None,
    keep_recent: int = 2,
    save_every: int | None = None,
  ):
    if keep_recent < 1:
      raise ValueError(f"keep_recent = {keep_recent} must be at least 1.")
    for name, value in (("keep_every", keep_every), ("save_every", save_every)):
      if value is not None and value < 1:
        raise ValueError(f"{name} = {value} must be a positive number of steps (or None).")
    self.directory = os.path.abspath(os.fspath(directory))
    self.keep_every = keep_every
    self.save_every = save_every
    policies = [ocp.checkpoint_managers.LatestN(n=keep_recent)]
    if keep_every is not None:
      policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every, max_to_keep=max_to_keep))
    options = ocp.CheckpointManagerOptions(
      create=True,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
    )
    self._manager = ocp.CheckpointManager(self.directory, item_names=_ITEMS, options=options)
    self._closed = False
    # A run that forgets `close` still finishes its pending writes before the interpreter exits.
    # It must happen before concurrent.futures shuts its thread pools down (orbax finalises a save
    # through them), which is earlier than `atexit` runs: threading's own exit hooks run first,
    # most recently registered first.
    register = getattr(threading, "_register_atexit", atexit.register)
    register(_close_at_exit, weakref.ref(self))

  @classmethod
  def from_config(cls, workdir: str | os.PathLike, config: Any) -> CheckpointManager:
    """The manager of a training run: `<workdir>/checkpoints`, with periodic snapshots every
    `config.training.snapshot_freq` kept and pre-emption checkpoints every
    `config.training.snapshot_freq_for_preemption` rotated."""
    training = config.training
    return cls(
      os.path.join(os.fspath(workdir), "checkpoints"),
      keep_every=int(training.snapshot_freq),
      max_to_keep=training.get("max_snapshots_to_keep", None),
      save_every=int(training.get("snapshot_freq_for_preemption", training.snapshot_freq)),
    )

  # --- Saving. ----------------------------------------------------------------------------------

  def should_save(self, step: int) -> bool:
    """Whether `step` (> 0) is a multiple of the periodic or the pre-emption frequency."""
    return step > 0 and any(
      f is not None and step % f == 0 for f in (self.keep_every, self.save_every)
    )

  def save(self, step: int, state: Any, config: Any = None) -> bool:
    """Starts writing `state` (and `config` as JSON) as the checkpoint of `step`; every host calls it.

    Args:
      step: the training step the state is at.
      state: a pytree of arrays (jax.Arrays, sharded or replicated, or numpy arrays).
      config: the experiment config (an `ml_collections.ConfigDict` or a mapping), or None.

    Returns:
      True if a checkpoint was started, False if one for `step` already exists.
    """
    step = int(step)
    if step in self.steps():
      logging.info(
        "A checkpoint for step %d already exists in %s; not saving.", step, self.directory
      )
      return False
    args = ocp.args.Composite(
      **{
        _STATE: ocp.args.StandardSave(state),
        _CONFIG: ocp.args.JsonSave(_config_json(config)),
        _MANIFEST: ocp.args.JsonSave(_manifest(state)),
      }
    )
    return bool(self._manager.save(step, args=args, force=True))

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager (idempotent)."""
    if not self._closed:
      self._manager.wait_until_finished()
      self._manager.close()
      self._closed = True

  def __enter__(self) -> CheckpointManager:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # --- Reading. ---------------------------------------------------------------------------------

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def restore_config(self, step: int) -> dict[str, Any]:
    """The config saved with the checkpoint of `step`, as a JSON dict."""
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored[_CONFIG]

  def restore(self, step: int, abstract_state: Any, *, sharding: Any = None) -> Any:
    """Restores the checkpoint of `step` into the structure of `abstract_state`.

    Args:
      step: a step in `steps()`.
      abstract_state: the state's structure, shapes and dtypes: a pytree of `jax.ShapeDtypeStruct`
        (e.g. `jax.eval_shape` of the state's builder) or of arrays. Leaves that carry a sharding
        are restored with it.
      sharding: the sharding of leaves that carry none (default: replicated over every device,
        `parallel.replicate`'s layout).

    Returns:
      The restored state: the pytree type of `abstract_state` with global jax.Arrays.

    Raises:
      CheckpointMismatchError: the checkpoint's leaves or shapes differ from `abstract_state`.
      CheckpointError: the checkpoint cannot be read or its arrays fail their CRC-32 check.
    """
    target = self._abstract(abstract_state, sharding)
    try:
      manifest = self._manager.restore(
        step, args=ocp.args.Composite(**{_MANIFEST: ocp.args.JsonRestore()})
      )[_MANIFEST]
    except Exception as error:  # any read failure means a damaged checkpoint
      raise CheckpointError(f"Checkpoint {step}: its manifest cannot be read ({error}).") from error
    expected = _manifest(target)["leaves"]
    self._check_structure(step, manifest, expected)
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)})
      )[_STATE]
    except Exception as error:  # likewise
      raise CheckpointError(f"Checkpoint {step}: its arrays cannot be read ({error}).") from error
    for key, record in _manifest(restored)["leaves"].items():
      saved = manifest["leaves"][key]["crc32"]
      if saved is not None and record["crc32"] is not None and saved != record["crc32"]:
        raise CheckpointError(
          f"Checkpoint {step}: leaf {key} fails its CRC-32 check (saved {saved}, read "
          f"{record['crc32']}); its files are damaged."
        )
    return restored

  def restore_latest(self, abstract_state: Any, *, sharding: Any = None) -> tuple[Any, int] | None:
    """Restores the newest checkpoint that restores cleanly; None if there is no checkpoint.

    A checkpoint that fails to read (missing or damaged files) is skipped with a logged warning
    and, once an older one restores, moved to `<directory>/corrupted/` (never deleted).

    Returns:
      (state, step), or None when the directory holds no checkpoint.

    Raises:
      CheckpointMismatchError: `abstract_state` does not match the checkpoints (a different config).
      CheckpointError: no checkpoint restores; nothing is moved or deleted.
    """
    failures: list[tuple[int, CheckpointError]] = []
    for step in reversed(self.steps()):
      try:
        state = self.restore(step, abstract_state, sharding=sharding)
      except CheckpointMismatchError:
        raise
      except CheckpointError as error:
        logging.warning(
          "Checkpoint %d in %s cannot be restored; falling back to an older one. %s",
          step,
          self.directory,
          error,
        )
        failures.append((step, error))
        continue
      if failures:
        self._quarantine([s for s, _ in failures])
      return state, step
    if failures:
      details = "\n".join(f"  step {s}: {e}" for s, e in failures)
      raise CheckpointError(
        f"No checkpoint in {self.directory} can be restored; nothing was moved or deleted.\n"
        f"{details}\nMove the directory aside to start afresh, or repair it."
      )
    return None

  # --- Helpers. ---------------------------------------------------------------------------------

  @staticmethod
  def _abstract(abstract_state: Any, sharding: Any) -> Any:
    default = (
      sharding if sharding is not None else NamedSharding(parallel.mesh(), parallel.REPLICATED)
    )

    def to_struct(leaf):
      if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        return leaf
      leaf_sharding = getattr(leaf, "sharding", None)
      if not isinstance(leaf_sharding, jax.sharding.Sharding):
        leaf_sharding = default
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf_sharding)

    return jax.tree.map(to_struct, abstract_state)

  @staticmethod
  def _check_structure(step: int, manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT:
      raise CheckpointError(f"Checkpoint {step}: its manifest is not a format-1 manifest.")
    saved = manifest["leaves"]
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = [
      f"{key}: checkpoint {saved[key]['shape']}, state {expected[key]['shape']}"
      for key in sorted(set(saved) & set(expected))
      if list(saved[key]["shape"]) != list(expected[key]["shape"])
    ]
    if missing or unexpected or shapes:
      parts = []
      if missing:
        parts.append(f"leaves not in the checkpoint: {', '.join(missing[:5])}")
      if unexpected:
        parts.append(f"leaves only in the checkpoint: {', '.join(unexpected[:5])}")
      if shapes:
        parts.append(f"shapes differ: {'; '.join(shapes[:5])}")
      raise CheckpointMismatchError(
        f"Checkpoint {step} does not match the state built from the config ({'; '.join(parts)}). "
        "Is the config the one this work directory was trained with?"
      )

  def _quarantine(self, steps: list[int]) -> None:
    """Moves failed checkpoints to `<directory>/corrupted/` (process 0), then rescans."""
    if jax.process_index() == 0:
      target_root = os.path.join(self.directory, CORRUPTED)
      os.makedirs(target_root, exist_ok=True)
      for step in steps:
        source = os.path.join(self.directory, str(step))
        target = os.path.join(target_root, str(step))
        suffix = 1
        while os.path.exists(target):
          target = os.path.join(target_root, f"{step}.{suffix}")
          suffix += 1
        shutil.move(source, target)
        logging.warning("Moved the unreadable checkpoint %s to %s.", source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("checkpoints: corrupted checkpoints moved")
    self._manager.reload()
