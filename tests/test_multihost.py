"""Multi-host training: two processes on localhost, 2 CPU devices each, through main.py --multihost.

`jax.distributed.initialize` connects the processes (coordinator 127.0.0.1:<free port>); the
gradient all-reduce crosses them through JAX's CPU collectives (gloo, the default
`jax_cpu_collectives_implementation`). Each host reads its own shard of the data (datasets.py seeds
its stream with `jax.process_index()`; tests/test_datasets.py checks the shards); both hosts
write one orbax checkpoint together into the shared work directory; only host 0 writes TensorBoard
scalars, samples and the progress bar. The hosts must end with bit-identical states, and a
restarted pair resumes from the shared checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import checkpoints
import run_lib
from configs.toy import checkerboard
from tests.test_resume import final_fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
  "training.batch_size": 64,  # 32 per host, 16 per device
  "training.snapshot_freq": 20,
  "training.snapshot_freq_for_preemption": 10,
  "training.log_freq": 5,
  "training.eval_freq": 20,
  "sampling.batch_size": 64,
  "eval.batch_size": 64,
  "sde.N": 20,
  "model.hidden": 64,
  "model.num_layers": 2,
  "model.embedding_dim": 32,
  "optim.warmup": 10,
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def host_commands(workdir: str, **changes) -> tuple[list[list[str]], dict[str, str]]:
  """The main.py command lines of processes 0 and 1 of a 2-process job on localhost (2 CPU
  devices each), and their environment; `changes` ("section.field": value) go on top of
  OVERRIDES."""
  address = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  args = ["--config", "configs/toy/checkerboard.py", "--workdir", workdir, "--multihost"]
  args += [f"--coordinator_address={address}", "--num_processes=2"]
  args += [f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()]
  return [[sys.executable, "main.py", *args, f"--process_id={i}"] for i in range(2)], env


def run_two_hosts(workdir: str, n_iters: int) -> list[str]:
  """Runs main.py as processes 0 and 1 of a 2-process job; returns their logs (stderr)."""
  commands, env = host_commands(workdir, **{"training.n_iters": n_iters})
  processes = [
    subprocess.Popen(
      command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    for command in commands
  ]
  logs = []
  try:
    for process in processes:
      logs.append(process.communicate(timeout=600)[1])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for i, (process, log) in enumerate(zip(processes, logs, strict=True)):
    assert process.returncode == 0, f"process {i}:\n{log[-4000:]}"
  return logs


@pytest.mark.slow
def test_two_processes_train_identically_and_resume_from_their_shared_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  logs = run_two_hosts(workdir, n_iters=20)
  for i, log in enumerate(logs):
    assert f"process {i} / 2, 2 local devices of 4 (cpu)" in log
  # Both hosts hold the same state, bit for bit (replicated over 4 devices of 2 processes).
  fingerprints = [final_fingerprint(log, 20) for log in logs]
  assert fingerprints[0] == fingerprints[1]

  # Host 0 alone writes scalars, samples and the progress bar.
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
  with np.load(os.path.join(workdir, "samples", "20", "samples.npz")) as npz:
    samples = npz["samples"]
  assert samples.shape == (64, 2) and np.all(np.isfinite(samples))  # gathered from both hosts
  assert "train:" in logs[0] and "train:" not in logs[1]

  # One checkpoint per step, written by both hosts together, restorable on another device count
  # (this process has 8): the state the hosts finished with.
  config = checkerboard.get_config()
  for name, value in {**OVERRIDES, "training.n_iters": 20}.items():
    section, field = name.split(".")
    config[section][field] = value
  training = run_lib.build_training(config)
  with checkpoints.CheckpointManager.from_config(workdir, config) as manager:
    assert manager.steps() == [10, 20]
    state, step = manager.restore_latest(training.experiment.abstract_state(training.optimizer))
  assert step == 20 and run_lib.state_fingerprint(state) == fingerprints[0]

  # Restarted, both hosts resume from the shared checkpoint and stay identical.
  logs = run_two_hosts(workdir, n_iters=30)
  for log in logs:
    assert "Resumed from the checkpoint of step 20." in log
  assert final_fingerprint(logs[0], 30) == final_fingerprint(logs[1], 30)
