"""checkpoints.py: round trips, sharded arrays, keep policy, resume, corruption and mismatches.

Runs on 8 virtual CPU devices (conftest.py), with replicated global arrays as the training loop holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

import checkpoints
import parallel
import sde_lib
from configs import default_toy_configs
from models import utils as mutils

# When a damaged checkpoint fails to read, orbax's internal asyncio tasks report their own
# exceptions after the fact; the failure itself is checked through checkpoints.CheckpointError.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@flax.struct.dataclass
class State:
  """A train state shaped like run_lib's: step, params, opt_state, ema_params."""

  step: jax.Array
  params: dict
  opt_state: optax.OptState
  ema_params: dict


def toy_config():
  config = default_toy_configs.get_default_configs()
  config.model.update(hidden=16, num_layers=2, embedding_dim=8)
  return config


def build_state(key: jax.Array, config) -> State:
  """The state of a toy run, from the config alone."""
  model = mutils.get_model(config)
  sde = sde_lib.get_sde(config.sde)
  params = mutils.init_params(key, model, sde, (1, config.data.dim))
  optimizer = optax.adam(config.optim.lr)
  return State(jnp.asarray(0, jnp.int32), params, optimizer.init(params), params)


def perturbed(state: State, seed: jax.Array) -> State:
  """The state with every float leaf moved, so restores are told apart from fresh inits."""
  key = jax.random.PRNGKey(seed)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(key, len(leaves))
  moved = [
    x + jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    for x, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, moved)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def all_files(root) -> set[str]:
  """Names of every file under root, relative to its checkpoint's step directory."""
  found = set()
  for d, _, names in os.walk(root):
    for n in names:
      rel = os.path.relpath(os.path.join(d, n), root).split(os.sep)
      if rel[0] == checkpoints.CORRUPTED:
        rel = rel[1:]
      found.add(os.path.join(*rel))
  return found


@pytest.fixture
def config():
  return toy_config()


@pytest.fixture(scope="module")
def states():
  """Distinct replicated states at steps 10, 20, 30 (built once: jitted flax init is quick,
  eager init is slow on a shared 2-core machine)."""
  base = jax.jit(lambda key: build_state(key, toy_config()))(jax.random.PRNGKey(0))
  perturb = jax.jit(perturbed)
  return {
    step: parallel.replicate(perturb(base.replace(step=jnp.asarray(step)), step))
    for step in (10, 20, 30)
  }


@pytest.fixture
def saved(tmp_path, config, states):
  """Checkpoints at steps 10, 20, 30 of replicated states; returns (directory, {step: state})."""
  directory = tmp_path / "checkpoints"
  with checkpoints.CheckpointManager(directory, keep_recent=5) as manager:
    for step, state in states.items():
      assert manager.save(step, state, config)
  return directory, states


def abstract_state(config):
  return jax.eval_shape(lambda key: build_state(key, config), jax.random.PRNGKey(0))


def test_round_trip_from_config_alone_on_8_devices(saved, config):
  directory, states = saved
  manager = checkpoints.CheckpointManager(directory)
  assert manager.steps() == [10, 20, 30]
  state, step = manager.restore_latest(abstract_state(config))
  assert step == 30 and int(state.step) == 30
  assert isinstance(state, State) and isinstance(state.opt_state[0], optax.ScaleByAdamState)
  assert_trees_equal(state, states[30])
  # Leaves without a sharding in the abstract state come back replicated over all 8 devices.
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(NamedSharding(parallel.mesh(), parallel.REPLICATED), 0)
    assert len(leaf.sharding.device_set) == jax.device_count() == 8
  # The config is stored as JSON beside the state.
  assert manager.restore_config(30) == config.to_dict()
  manager.close()


def test_restore_keeps_the_abstract_shardings(saved, config):
  directory, states = saved
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[3])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), abstract_state(config)
  )
  with checkpoints.CheckpointManager(directory) as manager:
    state = manager.restore(20, abstract)
  assert all(leaf.sharding == one_device for leaf in jax.tree.leaves(state))
  assert_trees_equal(state, states[20])


def test_keep_policy_rotates_preemption_checkpoints_and_keeps_snapshots(tmp_path, config):
  config.training.snapshot_freq = 20
  config.training.snapshot_freq_for_preemption = 5
  state = {"w": jnp.arange(3.0)}
  with checkpoints.CheckpointManager.from_config(tmp_path, config) as manager:
    assert manager.directory == str(tmp_path / "checkpoints")
    saved = [s for s in range(0, 66) if manager.should_save(s)]
    assert saved == list(range(5, 66, 5))
    for step in saved:
      manager.save(step, state, config)
    manager.wait()
    # The 2 newest (60, 65) and every multiple of snapshot_freq (20, 40, 60).
    assert manager.steps() == [20, 40, 60, 65]
    assert not manager.save(65, state)  # an existing step is not overwritten
  limited = checkpoints.CheckpointManager(tmp_path / "limited", keep_every=20, max_to_keep=1)
  for step in range(5, 66, 5):
    limited.save(step, state)
  limited.close()
  assert limited.steps() == [60, 65]


def test_empty_directory_has_nothing_to_resume(tmp_path, config):
  with checkpoints.CheckpointManager(tmp_path / "none") as manager:
    assert manager.restore_latest(abstract_state(config)) is None


def test_crash_mid_write_leaves_the_last_checkpoint(saved, config):
  directory, states = saved
  # A save interrupted before orbax's final rename leaves only a temporary directory.
  partial = directory / "40.orbax-checkpoint-tmp-1234567"
  shutil.copytree(directory / "30", partial)
  os.remove(partial / "state" / "manifest.ocdbt")
  with checkpoints.CheckpointManager(directory) as manager:
    state, step = manager.restore_latest(abstract_state(config))
  assert step == 30
  assert_trees_equal(state, states[30])
  assert partial.exists()


def damage(step_dir, how: str) -> None:
  if how == "files deleted":
    for d, _, names in os.walk(step_dir / "state"):
      for name in names:
        if os.sep + "d" in d:
          os.remove(os.path.join(d, name))
  elif how == "truncated":
    for d, _, names in os.walk(step_dir):
      for name in names:
        path = os.path.join(d, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  elif how == "garbage bytes":
    rng = np.random.default_rng(0)
    for d, _, names in os.walk(step_dir / "state"):
      for name in names:
        if os.path.basename(d) == "d":
          path = os.path.join(d, name)
          open(path, "wb").write(rng.bytes(os.path.getsize(path)))
  elif how == "values replaced":
    # Well-formed array files holding other values (here those of another checkpoint): the kind
    # of damage orbax reads without complaint (as it does some single flipped bytes in array
    # data); only the manifest's CRC-32 notices.
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "10" / "state", step_dir / "state")
  else:
    raise ValueError(how)


@pytest.mark.parametrize(
  "how, why",
  [
    ("files deleted", "arrays cannot be read"),
    ("truncated", "manifest cannot be read"),
    ("garbage bytes", "arrays cannot be read"),
    ("values replaced", "fails its CRC-32 check"),
  ],
)
def test_damaged_latest_falls_back_with_a_warning_and_deletes_nothing(
  saved, config, caplog, how, why
):
  directory, states = saved
  damage(directory / "30", how)
  before = all_files(directory)
  with checkpoints.CheckpointManager(directory) as manager:
    with caplog.at_level(logging.WARNING):
      state, step = manager.restore_latest(abstract_state(config))
    assert step == 20
    assert_trees_equal(state, states[20])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Checkpoint 30" in w and "falling back" in w and why in w for w in warnings)
    # The damaged checkpoint is moved aside, not deleted: every file is still there.
    assert (directory / checkpoints.CORRUPTED / "30").is_dir()
    assert all_files(directory) == before
    assert manager.steps() == [10, 20]
    # Training resumes from 20 and can write its own step 30 again.
    assert manager.save(30, states[30], config)
    manager.wait()
    assert manager.restore_latest(abstract_state(config))[1] == 30


def test_every_checkpoint_damaged_is_a_clear_error_and_moves_nothing(saved, config):
  directory, _ = saved
  for step in (10, 20, 30):
    damage(directory / str(step), "files deleted")
  before = all_files(directory)
  with checkpoints.CheckpointManager(directory) as manager:
    with pytest.raises(checkpoints.CheckpointError, match=r"No checkpoint .* nothing was moved"):
      manager.restore_latest(abstract_state(config))
    assert manager.steps() == [10, 20, 30]
  assert all_files(directory) == before and not (directory / checkpoints.CORRUPTED).exists()


def test_a_different_config_is_a_mismatch_not_a_fallback(saved, config):
  directory, _ = saved
  wider = toy_config()
  wider.model.hidden = 32
  with checkpoints.CheckpointManager(directory) as manager:
    with pytest.raises(
      checkpoints.CheckpointMismatchError, match=r"shapes differ: .*Dense.*16.*32"
    ):
      manager.restore_latest(abstract_state(wider))
    assert manager.steps() == [10, 20, 30]


def test_a_pending_save_finishes_when_the_process_exits(tmp_path):
  """Saves are asynchronous; a script that never waits or closes still leaves a complete checkpoint
  (without the manager's exit hook, orbax leaves only `7.orbax-checkpoint-tmp`)."""
  directory = tmp_path / "exit"
  code = (
    "import jax.numpy as jnp, checkpoints\n"
    f"manager = checkpoints.CheckpointManager({str(directory)!r})\n"
    "manager.save(7, {'w': jnp.arange(3e6)})\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root, "XLA_FLAGS": ""}
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, capture_output=True)
  assert sorted(os.listdir(directory)) == ["7"]
  with checkpoints.CheckpointManager(directory) as manager:
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"w": jax.ShapeDtypeStruct((3_000_000,), jnp.float32, sharding=one_device)}
    np.testing.assert_array_equal(
      manager.restore(7, abstract)["w"], np.arange(3e6, dtype=np.float32)
    )
