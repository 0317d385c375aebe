"""Pre-emption: a SIGTERM stops training after the current step, with a checkpoint of that step.

Cloud TPU, Kubernetes and SLURM send SIGTERM before they stop a job. `run_lib.train` then finishes
the step in flight, writes its checkpoint, waits for orbax and raises `TrainingPreempted`, a
SystemExit with code 143 (128 + SIGTERM). A restart resumes from that checkpoint and, since batch
k and the key of step k depend on k alone, ends bit for bit where an uninterrupted run does.
The toy run is the one of tests/test_resume.py (checkerboard, small MLP, 8 virtual CPU devices).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time

import pytest

import checkpoints
import run_lib
from tests import test_multihost
from tests.test_resume import (
  assert_states_identical,
  final_fingerprint,
  main_args,
  make_config,
  restore_latest,
  wait_until,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for_signal_delivery() -> None:
  """Python runs a signal handler in the main thread between bytecodes; give it a few."""
  for _ in range(100):
    time.sleep(0.001)


def test_first_sigterm_requests_a_stop_and_restores_the_default_action():
  """The first SIGTERM only sets the request (the process lives on); the handler then gives
  SIGTERM back its default action, so a second one terminates at once; `uninstall` restores
  the handler that was there before."""
  before = signal.getsignal(signal.SIGTERM)
  notice = run_lib._PreemptionNotice()
  notice.install()
  try:
    assert not notice.stop_requested(0)
    os.kill(os.getpid(), signal.SIGTERM)
    wait_for_signal_delivery()
    assert notice.stop_requested(1)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  finally:
    notice.uninstall()
  assert signal.getsignal(signal.SIGTERM) == before


def sigterm_during_call(monkeypatch, k: int) -> list[int]:
  """Makes `run_lib.stacked_batches` send this process SIGTERM during its k-th call (while the
  batches of step k are read); returns the list of its calls' `n`, appended as they happen."""
  calls = []
  stacked_batches = run_lib.stacked_batches

  def stacked_batches_with_sigterm(iterator, n):
    calls.append(n)
    if len(calls) == k:
      os.kill(os.getpid(), signal.SIGTERM)
      wait_for_signal_delivery()
    return stacked_batches(iterator, n)

  monkeypatch.setattr(run_lib, "stacked_batches", stacked_batches_with_sigterm)
  return calls


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted 40-step toy run: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  return workdir, run_lib.train(make_config(), workdir)


def test_sigterm_mid_run_checkpoints_that_step_and_the_restart_is_bit_exact(
  reference, tmp_path, monkeypatch, caplog
):
  """SIGTERM while the batches of step 13 are read: step 13 still runs, its checkpoint is
  written (pre-emption checkpoints are otherwise every 10 steps), train raises TrainingPreempted
  (code 143) and puts the SIGTERM handler back; the restart resumes at 13 and ends in the
  reference state at 40."""
  _, expected = reference
  workdir = str(tmp_path / "run")
  calls = sigterm_during_call(monkeypatch, 13)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(run_lib.TrainingPreempted) as stopped:
    run_lib.train(make_config(), workdir)
  assert stopped.value.step == 13 and stopped.value.code == 143 == run_lib.PREEMPTED_EXIT_CODE
  assert len(calls) == 13  # no step after the one in flight
  assert signal.getsignal(signal.SIGTERM) == handler
  with checkpoints.CheckpointManager.from_config(workdir, make_config()) as manager:
    assert manager.steps() == [10, 13]
  monkeypatch.undo()

  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    resumed = run_lib.train(make_config(), workdir)
  assert "Resumed from the checkpoint of step 13." in caplog.text
  assert_states_identical(resumed, expected)


def test_sigterm_at_a_checkpoint_step_saves_it_once(tmp_path, monkeypatch):
  """At step 10 the periodic pre-emption checkpoint is already being written: it is the one."""
  sigterm_during_call(monkeypatch, 10)
  workdir = str(tmp_path / "run")
  with pytest.raises(run_lib.TrainingPreempted) as stopped:
    run_lib.train(make_config(), workdir)
  assert stopped.value.step == 10
  with checkpoints.CheckpointManager.from_config(workdir, make_config()) as manager:
    assert manager.steps() == [10]


@pytest.mark.slow
def test_sigterm_to_main_exits_143_after_its_checkpoint_and_a_restart_resumes(tmp_path):
  """main.py training a long run gets SIGTERM right after its first step: it exits with code
  143, and its only checkpoint is the step it stopped at (the periodic ones are 100,000 steps
  apart). The same command (with n_iters 30 steps later) resumes there and ends, bit for bit, in
  the state of an uninterrupted in-process run of as many steps."""
  workdir = str(tmp_path / "run")
  far = {"training.snapshot_freq": 100_000, "training.snapshot_freq_for_preemption": 100_000}
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(
      main_args(workdir, **far, **{"training.n_iters": 1_000_000}),
      cwd=ROOT,
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    wait_until(lambda: "First train call" in log_path.read_text(), [process], log_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, log_path.read_text()[-3000:]
  text = log_path.read_text()
  match = re.search(r"Pre-empted: the checkpoint of step (\d+) is written", text)
  assert match, text[-3000:]
  stopped = int(match.group(1))
  assert "Traceback" not in text
  directory = os.path.join(workdir, "checkpoints")
  assert sorted(int(n) for n in os.listdir(directory) if n.isdigit()) == [stopped]

  total = stopped + 30
  result = subprocess.run(
    main_args(workdir, **far, **{"training.n_iters": total}),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from the checkpoint of step {stopped}." in result.stderr
  config = make_config(training__n_iters=total)
  expected = run_lib.train(config, str(tmp_path / "uninterrupted"))
  assert final_fingerprint(result.stderr, total) == run_lib.state_fingerprint(expected)
  restored, step = restore_latest(workdir, config)
  assert step == total
  assert_states_identical(restored, expected)


@pytest.mark.slow
def test_sigterm_to_one_of_two_hosts_stops_both_at_the_same_step(tmp_path):
  """Two main.py processes of one job (tests/test_multihost.py): SIGTERM to process 1 only.
  JAX's pre-emption service tells process 0, both stop after the same step, write its checkpoint
  together and exit 143; restarted, both resume from it and stay identical."""
  workdir = str(tmp_path / "run")
  far = {
    "training.n_iters": 1_000_000,
    "training.snapshot_freq": 100_000,
    "training.snapshot_freq_for_preemption": 100_000,
    "training.eval_freq": 100_000,
  }
  commands, env = test_multihost.host_commands(workdir, **far)
  log_paths = [tmp_path / f"host{i}.log" for i in range(2)]
  logs = [open(path, "w") for path in log_paths]  # closed below
  processes = [
    subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    for command, log in zip(commands, logs, strict=True)
  ]
  try:
    wait_until(lambda: "First train call" in log_paths[1].read_text(), processes, log_paths[1])
    processes[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in processes]
  finally:
    for process, log in zip(processes, logs, strict=True):
      if process.poll() is None:
        process.kill()
      log.close()
  texts = [path.read_text() for path in log_paths]
  assert codes == [143, 143], [t[-2000:] for t in texts]
  steps = [int(re.search(r"Pre-empted: the checkpoint of step (\d+)", t).group(1)) for t in texts]
  assert steps[0] == steps[1]
  directory = os.path.join(workdir, "checkpoints")
  assert sorted(int(n) for n in os.listdir(directory) if n.isdigit()) == [steps[0]]

  resumed = test_multihost.run_two_hosts(workdir, n_iters=steps[0] + 10)
  for log in resumed:
    assert f"Resumed from the checkpoint of step {steps[0]}." in log
  fingerprints = [final_fingerprint(log, steps[0] + 10) for log in resumed]
  assert fingerprints[0] == fingerprints[1]
