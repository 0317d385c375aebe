"""Runs that are interrupted, damaged or diverge end where an uninterrupted run does, or stop safely.

A toy run (checkerboard, small MLP, 8 virtual CPU devices) of 40 steps with a checkpoint every
10 is the reference. Every step folds its key from the run's key and its step number, and batch k
of the data stream feeds step k (run_lib skips the stream to the resumed step), so on CPU a
resumed run must reproduce the reference bit for bit: params, EMA, optimizer state and step. The
comparisons below are therefore exact (array_equal), not approximate.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import checkpoints
import run_lib
from configs.toy import checkerboard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OVERRIDES = {
  "training.batch_size": 64,
  "training.n_iters": 40,
  "training.snapshot_freq": 20,
  "training.snapshot_freq_for_preemption": 10,
  "training.log_freq": 10,
  # Evaluation and samples do not touch the train state: skip them (and their compilation).
  "training.eval_freq": 1000,
  "training.snapshot_sampling": False,
  "eval.batch_size": 64,
  "model.hidden": 64,
  "model.num_layers": 2,
  "model.embedding_dim": 32,
  "optim.warmup": 10,
}


def make_config(**changes):
  """The toy config with OVERRIDES and `changes` ("section__field": value)."""
  config = checkerboard.get_config()
  for name, value in {**OVERRIDES, **{k.replace("__", "."): v for k, v in changes.items()}}.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


def main_args(workdir: str, **changes) -> list[str]:
  """The main.py command line training the toy run of `make_config` in `workdir`; `changes`
  ("section.field": value) go on top of OVERRIDES."""
  args = [sys.executable, "main.py", "--config", "configs/toy/checkerboard.py"]
  args += ["--workdir", workdir]
  return args + [f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()]


def wait_until(ready, processes, log_path, timeout: float = 300.0) -> None:
  """Polls `ready()` until it holds; fails (with the log's tail) if a process ends first, or after
  `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while not ready():
    assert all(p.poll() is None for p in processes), log_path.read_text()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)


def final_fingerprint(log: str, step: int) -> str:
  """The state fingerprint a main.py run logs when it finishes at `step`."""
  match = re.search(rf"Finished at step {step}; state fingerprint ([0-9a-f]+)", log)
  assert match, log[-3000:]
  return match.group(1)


def host_leaves(state) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
  }


def assert_states_identical(actual, expected) -> None:
  """Every leaf (step, params, opt_state, ema_params) bit for bit equal."""
  actual, expected = host_leaves(actual), host_leaves(expected)
  assert actual.keys() == expected.keys()
  different = [k for k in expected if not np.array_equal(actual[k], expected[k])]
  assert not different, f"leaves that differ: {different[:5]}"


def restore_latest(workdir, config):
  training = run_lib.build_training(config)
  with checkpoints.CheckpointManager.from_config(workdir, config) as manager:
    return manager.restore_latest(training.experiment.abstract_state(training.optimizer))


def copy_run(source, target, keep_steps=None) -> str:
  """A copy of a work directory, optionally with only the checkpoints of `keep_steps`."""
  shutil.copytree(source, target)
  if keep_steps is not None:
    directory = os.path.join(target, "checkpoints")
    for name in os.listdir(directory):
      if name.isdigit() and int(name) not in keep_steps:
        shutil.rmtree(os.path.join(directory, name))
  return str(target)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted 40-step run: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  state = run_lib.train(make_config(), workdir)
  return workdir, state


def test_reference_run_checkpoints(reference):
  workdir, state = reference
  assert int(state.step) == 40
  with checkpoints.CheckpointManager.from_config(workdir, make_config()) as manager:
    assert manager.steps() == [20, 30, 40]  # two newest + the snapshot every 20
  restored, step = restore_latest(workdir, make_config())
  assert step == 40
  assert_states_identical(restored, state)


def test_resume_is_bit_exact(reference, tmp_path, caplog):
  """Stopped after step 20 (only its checkpoint left), restarted: the same state at step 40."""
  workdir, state = reference
  resumed_dir = copy_run(workdir, tmp_path / "run", keep_steps={20})
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    resumed = run_lib.train(make_config(), resumed_dir)
  assert "Resumed from the checkpoint of step 20." in caplog.text
  assert_states_identical(resumed, state)


def test_n_jitted_steps_gives_the_same_state_up_to_round_off(reference, tmp_path):
  """5 steps per call (an unrolled lax.scan) and 1 step per call: the same 40 steps.

  Not bit for bit: XLA compiles the unrolled copies of the step differently (the first of them
  matches the single step exactly; later ones differ in the last bits; a rolled scan is exact
  but 18x slower around convolutions on CPU, ENVIRONMENT.md). Measured after 40 steps: at most
  1e-6 of a leaf's largest value (EMA 1.5e-6 of 1.58, params 6e-8 of 1.59). Feeding the steps
  one batch late instead moves every leaf by more than 2e-4 of its largest value (params 1e-2,
  EMA 2e-4, Adam's nu 0.1), as would a reused key: the bound 1e-5 lies between the two.
  """
  _, state = reference
  five = run_lib.train(make_config(training__n_jitted_steps=5), str(tmp_path / "run"))
  actual, expected = host_leaves(five), host_leaves(state)
  assert actual.keys() == expected.keys()
  assert int(actual[".step"]) == int(expected[".step"]) == 40
  for key, value in expected.items():
    scale = max(float(np.max(np.abs(value))), 1e-30)
    assert np.max(np.abs(actual[key] - value)) <= 1e-5 * scale, key


# Orbax leaves asyncio futures of the failed reads unretrieved; pytest reports them at exit.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncated", "garbage bytes"])
def test_damaged_newest_checkpoint_falls_back(reference, tmp_path, caplog, how):
  """The newest checkpoint (40) damaged: training falls back to 30 with a warning, moves 40 to
  corrupted/ (every file kept), trains 30 -> 40 again and ends in the reference state."""
  workdir, state = reference
  run_dir = copy_run(workdir, tmp_path / "run")
  step_dir = os.path.join(run_dir, "checkpoints", "40")
  damaged_files = {}
  rng = np.random.default_rng(0)
  for directory, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names:
      path = os.path.join(directory, name)
      size = os.path.getsize(path)
      if how == "truncated":
        with open(path, "r+b") as f:
          f.truncate(size // 2)
      elif os.path.basename(directory) == "d":  # array data files
        with open(path, "wb") as f:
          f.write(rng.bytes(size))
      damaged_files[os.path.relpath(path, step_dir)] = os.path.getsize(path)
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    resumed = run_lib.train(make_config(), run_dir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("Checkpoint 40" in w and "falling back" in w for w in warnings), warnings
  assert "Resumed from the checkpoint of step 30." in caplog.text
  assert_states_identical(resumed, state)
  # Nothing deleted: the damaged checkpoint sits in corrupted/ with every file as it was.
  moved = os.path.join(run_dir, "checkpoints", checkpoints.CORRUPTED, "40")
  for relative, size in damaged_files.items():
    assert os.path.getsize(os.path.join(moved, relative)) == size
  # A new, good checkpoint 40 was written in its place.
  restored, step = restore_latest(run_dir, make_config())
  assert step == 40
  assert_states_identical(restored, state)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(reference, tmp_path):
  """Resumed at 40 with an infinite learning rate and a checkpoint due after every step: the
  step after 40 leaves infinite parameters (its loss, computed before the update, is still
  finite); the run stops there with TrainingDivergedError and saves nothing non-finite."""
  workdir, state = reference
  run_dir = copy_run(workdir, tmp_path / "run")
  config = make_config(
    optim__lr=float("inf"), training__n_iters=60, training__snapshot_freq_for_preemption=1
  )
  with pytest.raises(run_lib.TrainingDivergedError, match=r"non-finite by step 41.*step 40"):
    run_lib.train(config, run_dir)
  with checkpoints.CheckpointManager.from_config(run_dir, config) as manager:
    assert manager.steps() == [20, 30, 40]
  restored, step = restore_latest(run_dir, config)
  assert step == 40
  assert_states_identical(restored, state)
  assert not os.path.exists(os.path.join(run_dir, "checkpoints", checkpoints.CORRUPTED))


class _NoCheckpoints:
  """Stands in for a CheckpointManager that holds no checkpoint yet."""

  def latest_step(self):
    return None


def test_divergence_message_names_the_first_non_finite_loss():
  metrics = {"loss": np.array([0.5, np.nan, np.inf]), "state_finite": np.array(False)}
  message = run_lib._diverged(metrics, 100, _NoCheckpoints())
  assert message.startswith("The training loss became nan at step 102")
  finite = {"loss": np.ones(3), "state_finite": np.array(True)}
  assert run_lib._diverged(finite, 0, _NoCheckpoints()) is None


@pytest.mark.slow
def test_kill_minus_9_then_restart_is_bit_exact(tmp_path):
  """A training process killed with SIGKILL right after its first checkpoints appear, then
  restarted from the command line, ends in the state of an uninterrupted run (in-process here)."""
  changes = {"training.n_iters": 200, "training.snapshot_freq": 100}
  config = make_config(**{k.replace(".", "__"): v for k, v in changes.items()})
  expected = run_lib.train(config, str(tmp_path / "uninterrupted"))

  workdir = str(tmp_path / "killed")
  args = main_args(workdir, **changes)
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    directory = os.path.join(workdir, "checkpoints")
    # Orbax renames a checkpoint's temporary directory to its step number once it is complete.
    wait_until(
      lambda: os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory)),
      [process],
      log_path,
    )
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
  saved = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  assert saved and saved[-1] < 200  # killed mid-run

  result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  match = re.search(r"Resumed from the checkpoint of step (\d+)\.", result.stderr)
  assert match and int(match.group(1)) in saved, result.stderr[-3000:]
  assert final_fingerprint(result.stderr, 200) == run_lib.state_fingerprint(expected)
  restored, step = restore_latest(workdir, config)
  assert step == 200
  assert_states_identical(restored, expected)
