"""Training and sampling loops: `train(config, workdir)` and `sample(config, workdir)`.

A work directory holds

    checkpoints/<step>/       orbax checkpoints of the train state and the config (checkpoints.py)
    checkpoints/corrupted/    checkpoints that failed to restore, moved aside (never deleted)
    tensorboard/              scalars: loss, eval_loss, lr, grad_norm, steps_per_s, images_per_s,
                              data_share (the input pipeline's share of the wall time), sample_nfe
    samples/<step>/           samples from the EMA parameters at every snapshot: PNG + npz
    config.json               the config of the latest start

Training resumes from the newest checkpoint that restores cleanly (after a crash, a kill -9 or a
pre-emption; a damaged newest checkpoint falls back to the one before), and continues the same data
stream and the same random keys: every step folds its own key from the base key and the step
number (`losses.get_step_fn`), and batch k of the host's stream feeds step k. An interrupted run
therefore ends bit for bit where an uninterrupted one does, and so does a run with another
`n_jitted_steps`. The step is built in `losses` and mapped over every device of every host by
`parallel.data_parallel`; nothing here knows more about the devices than that.

Every config check runs in `build_training`, before anything is compiled or written: a wrong
config fails in a second with a ValueError naming the field.

Pre-emption. Cloud TPU, Kubernetes and SLURM send SIGTERM some time before they stop a job. The
first SIGTERM makes `train` finish the step it is in, write a checkpoint of that step, wait until
orbax has it on disk and raise `TrainingPreempted`, a `SystemExit` with code 143 (128 + SIGTERM,
what a process killed by SIGTERM reports): the process exits without a traceback, and the scheduler
sees a job that did not finish (exit 0 would tell Kubernetes or a retry wrapper that it had), so it
restarts or requeues it, and the restart resumes from that checkpoint. A second SIGTERM (or ctrl-C)
stops the process at once. With several processes, JAX's pre-emption service (on by default with
`jax.distributed`) catches SIGTERM on any host and every host stops after the same step
(tests/test_preemption.py); SIGTERM is then JAX's to handle, so stop such a job at once with
ctrl-C or SIGKILL.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import checkpoint_import
import checkpoints
import datasets
import losses
import parallel
import sampling
import sde_lib
import writers
from models import utils as mutils

# XLA CPU option for the train step (ENVIRONMENT.md; benchmarks/train_throughput.py).
YNN_FUSION = "xla_cpu_experimental_ynn_fusion_type"
TRAIN_YNN_FUSION_TYPE = "LIBRARY_FUSION_TYPE_REDUCE"


class TrainingDivergedError(FloatingPointError):
  """The loss or the train state became NaN or infinite; the last good checkpoint is kept."""


# Exit code of a run stopped by SIGTERM after its pre-emption checkpoint: 128 + 15.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class TrainingPreempted(SystemExit):
  """Training stopped on SIGTERM at `step`, whose checkpoint is on disk (exit code 143)."""

  def __init__(self, step: int):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step


class _PreemptionNotice:
  """Between `install` and `uninstall`, records a SIGTERM as a request to stop after the current
  step.

  One process: a SIGTERM handler (main thread only) that sets the request and restores the
  default action, so a second SIGTERM terminates the process at once. Several processes: JAX's
  pre-emption service, which catches SIGTERM on any host and makes `stop_requested` true on every
  host at the same call (it must then be asked after every call, with consecutive numbers).
  """

  def __init__(self):
    self._received = False
    self._previous = None
    self._installed = False
    self._multihost = jax.process_count() > 1

  def install(self) -> None:
    if self._multihost:
      return
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    else:
      logging.warning("train runs outside the main thread: SIGTERM is not handled gracefully.")

  def _handle(self, signum: int, frame: Any) -> None:
    del signum, frame
    self._received = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.warning(
      "SIGTERM: finishing the current step, then writing a pre-emption checkpoint and exiting "
      "(a second SIGTERM or ctrl-C stops at once)."
    )

  def stop_requested(self, call: int) -> bool:
    """Whether to stop after train call number `call` (consecutive on every host)."""
    if not self._multihost:
      return self._received
    from jax.experimental import multihost_utils

    try:
      return multihost_utils.reached_preemption_sync_point(call)
    except RuntimeError as error:  # the pre-emption service is disabled
      logging.warning("No graceful SIGTERM handling across hosts: %s", error)
      self._multihost = False
      return False

  def uninstall(self) -> None:
    """Restores the SIGTERM handler that `install` replaced."""
    if self._installed:
      previous = self._previous if self._previous is not None else signal.SIG_DFL
      signal.signal(signal.SIGTERM, previous)
      self._installed = False


def _check_frequencies(config: Any) -> None:
  """Frequencies must be multiples of n_jitted_steps: the loop advances that many steps a call."""
  training = config.training
  n = int(training.n_jitted_steps)
  if n < 1:
    raise ValueError(f"config.training.n_jitted_steps = {n} must be at least 1.")
  if int(training.n_iters) < n:
    raise ValueError(
      f"config.training.n_iters = {training.n_iters} must be at least "
      f"config.training.n_jitted_steps = {n}."
    )
  for field in ("snapshot_freq", "snapshot_freq_for_preemption", "log_freq", "eval_freq"):
    value = int(training[field])
    if value < 1 or value % n:
      raise ValueError(
        f"config.training.{field} = {value} must be a positive multiple of "
        f"config.training.n_jitted_steps = {n}."
      )


class Experiment:
  """What every mode builds from a config: the SDE, the network, its score, shapes and scalers.

  Building it checks the SDE, model and dataset fields of the config (errors name the field);
  nothing is compiled.
  """

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    # The data first: a wrong image size is the data's error before it is the network's.
    self.data_shape = datasets.get_source(config).shape
    self.sde = sde_lib.get_sde(config.sde)
    self.continuous = bool(config.training.continuous)
    self.model = mutils.get_model(config)
    # An imported released checkpoint brings its own fixed constants (NCSN++'s Fourier weights);
    # without them the network derives its own (those of a run trained here).
    constants = checkpoint_import.load_constants(workdir) if workdir else None
    self.score_fn = mutils.get_score_fn(self.sde, self.model, self.continuous, constants)
    self.inverse_scaler = datasets.get_data_inverse_scaler(config)
    self.is_image = len(self.data_shape) == 3

  def init_state(self, key: jax.Array, optimizer) -> losses.TrainState:
    params = mutils.init_params(key, self.model, self.sde, (1, *self.data_shape), self.continuous)
    return losses.init_train_state(params, optimizer)

  def abstract_state(self, optimizer) -> losses.TrainState:
    """The train state's structure, shapes and dtypes (nothing computed), e.g. for restoring."""
    return jax.eval_shape(
      functools.partial(self.init_state, optimizer=optimizer), jax.random.key(0)
    )

  def per_device_sampler(self, num_samples: int) -> tuple[sampling.SampleFn, int]:
    """The config's sampler for one device's share of `num_samples`, and that share."""
    per_device = parallel.per_device(num_samples, "config.sampling.batch_size")
    sample = sampling.get_sampler(
      self.config,
      self.sde,
      self.score_fn,
      (per_device, *self.data_shape),
      self.inverse_scaler,
      float(self.config.sampling.eps),
    )
    return sample, per_device

  def sampler(self, num_samples: int) -> Callable[..., Any]:
    """A data-parallel sampler `sample(key, params) -> (x, nfe)` of `num_samples` examples."""
    return sampling.data_parallel_sampler(*self.per_device_sampler(num_samples))


def train_compiler_options(config: Any) -> dict[str, str] | None:
  """XLA options of the jitted train step, on CPU only.

  XLA CPU's `xla_cpu_experimental_ynn_fusion_type` comes from
  `config.training.xla_cpu_ynn_fusion_type`: absent means `TRAIN_YNN_FUSION_TYPE` (YNN fusion of
  reductions only), None means XLA's own default (which also hands convolutions and elementwise
  ops to YNN), "" turns YNN fusion off. Measured side by side on 2 idle cores (reduced DDPM++,
  batch 16, `python benchmarks/train_throughput.py`): reductions only ran at 1.09x XLA's default
  with one step per call and 1.16x with 5; "" at 0.87x.
  """
  value = config.training.get("xla_cpu_ynn_fusion_type", TRAIN_YNN_FUSION_TYPE)
  if value is None or jax.default_backend() != "cpu":
    return None
  return {YNN_FUSION: str(value)}


def _all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point leaf of `tree` is free of NaN and infinity (a bool scalar)."""
  flags = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


@dataclasses.dataclass
class Training:
  """What `train` runs, built from a config by `build_training` (nothing compiled yet).

  Attributes:
    experiment: the SDE, network and data shapes.
    optimizer: the optax optimizer of config.optim.
    lr_schedule: its learning-rate schedule.
    n_jitted: config.training.n_jitted_steps, the steps per call of `train_step`.
    train_step: `train_step(state, batches, key) -> (state, metrics)`: n_jitted steps on batches
      [n_jitted, global_batch, ...] (`stacked_batches`), jitted and data-parallel; metrics hold
      "loss", "grad_norm", "lr" [n_jitted] and "state_finite" (whether the new state is free of
      NaN and infinity). The state argument is donated.
    eval_step: `eval_step(state, batch, key) -> {"loss"}` on the EMA parameters.
    sampler: `sampler(key, params) -> (x, nfe)` of sample_count examples, or None.
    sample_count: how many samples a snapshot draws.
  """

  experiment: Experiment
  optimizer: Any
  lr_schedule: Any
  n_jitted: int
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  sampler: Callable[..., Any] | None
  sample_count: int

  def init_state(self, key: jax.Array) -> losses.TrainState:
    """A fresh train state from `key`, replicated over every device."""
    init = jax.jit(self.experiment.init_state, static_argnums=1)
    return parallel.replicate(init(key, self.optimizer))


def build_training(config: Any, workdir: str | None = None) -> Training:
  """Checks the config and builds the jitted (not yet compiled) train step, eval step and sampler.

  Raises:
    ValueError naming the config field: unknown dataset, SDE, model, objective, predictor, ...;
    a batch size that does not split over the devices; an image size the data or the model do
    not have; frequencies that are not multiples of n_jitted_steps. All of them before any
    compilation.
  """
  # Every check first (pure Python, nothing jitted): errors come in about a second.
  _check_frequencies(config)
  training = config.training
  n_jitted = int(training.n_jitted_steps)
  experiment = Experiment(config, workdir)
  datasets.batch_sizes(config)
  datasets.batch_sizes(config, evaluation=True)
  optimizer = losses.get_optimizer(config.optim)
  lr_schedule = losses.get_lr_schedule(config.optim)
  train_loss = losses.get_loss_fn(config, experiment.sde, experiment.score_fn, train=True)
  eval_loss = losses.get_loss_fn(config, experiment.sde, experiment.score_fn, train=False)
  sample_count = int(config.sampling.get("batch_size", training.batch_size))
  per_device_sampler = (
    experiment.per_device_sampler(sample_count) if training.snapshot_sampling else None
  )

  # Then the jitted functions.
  multi_step = losses.get_multi_step_fn(
    losses.get_step_fn(
      train_loss, optimizer, float(config.model.ema_rate), parallel.AXIS, lr_schedule
    ),
    n_jitted,
  )

  def checked_step(state, batches, key):
    state, metrics = multi_step(state, batches, key)
    return state, {**metrics, "state_finite": _all_finite(state)}

  train_step = parallel.data_parallel(
    checked_step,
    in_specs=(parallel.REPLICATED, P(None, parallel.AXIS), parallel.REPLICATED),
    out_specs=(parallel.REPLICATED, parallel.REPLICATED),
    donate_argnums=(0,),
    compiler_options=train_compiler_options(config),
  )
  eval_step = parallel.data_parallel(
    losses.get_eval_step_fn(eval_loss, parallel.AXIS),
    in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
    out_specs=parallel.REPLICATED,
  )
  sampler = None
  if per_device_sampler is not None:
    sampler = sampling.data_parallel_sampler(*per_device_sampler)
  return Training(
    experiment, optimizer, lr_schedule, n_jitted, train_step, eval_step, sampler, sample_count
  )


def stacked_batches(iterator: Iterator[dict], n: int) -> dict:
  """The next `n` host-local batches stacked on a leading steps axis, as global arrays
  [n, global_batch, ...] split over every device (`parallel.shard`)."""
  batches = [next(iterator) for _ in range(n)]
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  return parallel.shard(stacked, leading=1)


def _endless(make: Any) -> Iterator[dict]:
  """Cycles through a finite evaluation iterator, restarting it when it ends."""
  while True:
    yield from make()


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a global array on this host (gathered from every host if need be)."""
  if jax.process_count() == 1 or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def state_fingerprint(state: Any) -> str:
  """A SHA-256 (16 hex digits) of every leaf of `state` as this host holds it (replicated leaves:
  its local copy). Equal fingerprints on two hosts, or of two runs, mean bit-equal states."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()[:16]


def _write_samples(directory: str, samples: np.ndarray, data: np.ndarray | None, is_image: bool):
  os.makedirs(directory, exist_ok=True)
  writers.save_npz(os.path.join(directory, "samples.npz"), samples=samples)
  if is_image:
    scale = max(1, 256 // samples.shape[1])
    writers.save_image_grid(os.path.join(directory, "samples.png"), samples, scale=scale)
  elif samples.shape[-1] == 2:
    writers.scatter_png(os.path.join(directory, "samples.png"), samples, data)


def _diverged(metrics: dict, first_step: int, manager: checkpoints.CheckpointManager) -> str | None:
  """A message if the call starting at step `first_step` + 1 produced a non-finite loss or state."""
  loss = np.asarray(metrics["loss"]).reshape(-1)
  bad = np.flatnonzero(~np.isfinite(loss))
  if bad.size:
    what = f"The training loss became {loss[bad[0]]} at step {first_step + 1 + bad[0]}"
  elif not bool(np.asarray(metrics["state_finite"])):
    what = (
      f"The train state (parameters, EMA or optimizer state) became non-finite by step "
      f"{first_step + len(loss)} (loss {loss[-1]:.5g})"
    )
  else:
    return None
  return (
    f"{what}; stopped. The newest checkpoint (step {manager.latest_step()}) is the last good "
    "state. Lower config.optim.lr, check config.optim.grad_clip, or inspect the data."
  )


def train(config: Any, workdir: str, **unused: Any) -> losses.TrainState:
  """Trains `config`'s model in `workdir`, resuming from its newest good checkpoint.

  Returns the final train state. Raises `TrainingDivergedError` if the loss or the state becomes
  non-finite (nothing non-finite is saved: the last good checkpoint stays the newest),
  `TrainingPreempted` (exit code 143) after a SIGTERM, once the checkpoint of the step it stopped
  at is written (see the module docstring), and `ValueError` naming the field for a bad config,
  before anything compiles or is written.
  """
  del unused
  run = build_training(config, workdir)
  training = config.training
  n_jitted, experiment = run.n_jitted, run.experiment
  num_steps = int(training.n_iters)
  if num_steps % n_jitted:
    logging.warning(
      "config.training.n_iters = %d is not a multiple of n_jitted_steps = %d: training stops at "
      "step %d.",
      num_steps,
      n_jitted,
      num_steps - num_steps % n_jitted,
    )

  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  key = jax.random.key(int(config.seed))
  init_key, train_key, eval_key, sample_key = jax.random.split(key, 4)
  manager = checkpoints.CheckpointManager.from_config(workdir, config)
  # Restored leaves are replicated over every device (the checkpoint manager's default).
  restored = manager.restore_latest(experiment.abstract_state(run.optimizer))
  if restored is None:
    state, initial_step = run.init_state(init_key), 0
  else:
    state, initial_step = restored
    logging.info("Resumed from the checkpoint of step %d.", initial_step)

  # The data stream continues where the checkpoint left it: batch k feeds step k. The source
  # skips the consumed batches before decoding them (datasets.get_dataset's `start`).
  train_iter = datasets.get_dataset(config, split="train", start=initial_step)
  eval_iter = _endless(lambda: datasets.get_dataset(config, split="test", evaluation=True))
  reference = None
  if not experiment.is_image and run.sampler is not None:
    reference = next(datasets.get_dataset(config, split="test", evaluation=True))["image"]
    reference = reference.reshape(-1, *experiment.data_shape)

  writer = writers.MetricWriter(os.path.join(workdir, "tensorboard"))
  global_batch = int(training.batch_size)
  progress = tqdm(
    total=num_steps,
    initial=initial_step,
    desc="train",
    unit="step",
    disable=jax.process_index() != 0,
    dynamic_ncols=True,
    mininterval=0.1 if sys.stderr.isatty() else 30.0,
  )
  step = initial_step
  last_log = None  # (time, step, data seconds) at the last log; set after the first call
  data_seconds = 0.0
  saved_step = None  # the step of the last checkpoint this run started
  preempted = False
  notice = _PreemptionNotice()
  try:
    notice.install()
    while step + n_jitted <= num_steps:
      start = time.perf_counter()
      batches = stacked_batches(train_iter, n_jitted)
      data_seconds += time.perf_counter() - start
      state, metrics = run.train_step(state, batches, train_key)
      message = _diverged(metrics, step, manager)  # waits for the step
      if message is not None:
        raise TrainingDivergedError(message)
      if last_log is None:
        logging.info(
          "First train call (compilation included): %.1f s.", time.perf_counter() - start
        )
        last_log = (time.perf_counter(), step + n_jitted, data_seconds)
      step += n_jitted
      progress.update(n_jitted)

      if step % int(training.log_freq) == 0 and step > last_log[1]:
        now = time.perf_counter()
        elapsed = max(now - last_log[0], 1e-9)
        steps_per_s = (step - last_log[1]) / elapsed
        scalars = {k: float(np.asarray(v)[-1]) for k, v in metrics.items() if k != "state_finite"}
        scalars.update(
          steps_per_s=steps_per_s,
          images_per_s=steps_per_s * global_batch,
          data_share=(data_seconds - last_log[2]) / elapsed,
        )
        last_log = (now, step, data_seconds)
        writer.scalars(scalars, step)
        progress.set_postfix(loss=f"{scalars['loss']:.4g}")
        logging.info("step %d: %s", step, ", ".join(f"{k} {v:.5g}" for k, v in scalars.items()))

      if step % int(training.eval_freq) == 0:
        eval_batch = parallel.shard(next(eval_iter))
        eval_metrics = run.eval_step(state, eval_batch, jax.random.fold_in(eval_key, step))
        writer.scalar("eval_loss", to_host(eval_metrics["loss"]), step)

      if manager.should_save(step) or step + n_jitted > num_steps:
        manager.save(step, state, config)
        saved_step = step

      if notice.stop_requested(step // n_jitted):
        if saved_step != step:
          manager.save(step, state, config)
        preempted = True
        break

      if run.sampler is not None and step % int(training.snapshot_freq) == 0:
        samples, nfe = run.sampler(jax.random.fold_in(sample_key, step), state.ema_params)
        samples = to_host(samples)
        if jax.process_index() == 0:
          _write_samples(
            os.path.join(workdir, "samples", str(step)), samples, reference, experiment.is_image
          )
        writer.scalar("sample_nfe", to_host(nfe), step)
        logging.info("step %d: wrote %d samples (NFE %d).", step, len(samples), int(to_host(nfe)))
  finally:
    progress.close()
    writer.close()
    manager.close()  # waits until every started checkpoint is on disk
    notice.uninstall()  # after the wait: a SIGTERM during it is still a graceful request
  if preempted:
    logging.warning(
      "Pre-empted: the checkpoint of step %d is written; exiting with code %d. Run the same "
      "command again to resume from it.",
      step,
      PREEMPTED_EXIT_CODE,
    )
    raise TrainingPreempted(step)
  logging.info("Finished at step %d; state fingerprint %s.", step, state_fingerprint(state))
  return state


def sample(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> None:
  """Draws `config.eval.num_samples` samples from the newest checkpoint's EMA parameters."""
  del unused
  experiment = Experiment(config, workdir)
  batch = int(config.eval.batch_size)
  num_samples = int(config.eval.num_samples)
  if num_samples % batch:
    raise ValueError(
      f"config.eval.num_samples = {num_samples} must be a multiple of "
      f"config.eval.batch_size = {batch}."
    )
  sampler = experiment.sampler(batch)
  optimizer = losses.get_optimizer(config.optim)
  abstract = experiment.abstract_state(optimizer)
  manager = checkpoints.CheckpointManager.from_config(workdir, config)
  restored = manager.restore_latest(abstract)
  manager.close()
  if restored is None:
    raise FileNotFoundError(
      f"No checkpoint in {os.path.join(workdir, 'checkpoints')}: train first "
      f"(python main.py --config ... --workdir {workdir})."
    )
  state, step = restored
  params = parallel.replicate(state.ema_params)
  out_dir = os.path.join(workdir, eval_folder, f"samples_{step}")
  key = jax.random.fold_in(jax.random.key(int(config.seed)), step)
  chunks = []
  for i in tqdm(range(num_samples // batch), desc="sample", disable=jax.process_index() != 0):
    x, nfe = sampler(jax.random.fold_in(key, i), params)
    chunks.append(to_host(x))
  samples = np.concatenate(chunks)
  if jax.process_index() == 0:
    _write_samples(out_dir, samples, None, experiment.is_image)
    with open(os.path.join(out_dir, "info.json"), "w") as f:
      json.dump({"step": int(step), "num_samples": len(samples), "nfe": int(to_host(nfe))}, f)
  logging.info("Wrote %d samples of step %d to %s.", len(samples), step, out_dir)


def import_released(config: Any, workdir: str, checkpoint: str | None = None, **unused: Any) -> int:
  """Imports a released score_sde / score_sde_pytorch checkpoint (checkpoint_import.py)."""
  del unused
  if not checkpoint:
    raise ValueError("--mode import needs --checkpoint=<path of a released checkpoint>.")
  return checkpoint_import.import_checkpoint(config, workdir, checkpoint)


def evaluate(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> dict:
  """Evaluates checkpoints (eval_lib.evaluate): loss, samples, FID / digits metric, bits/dim."""
  import eval_lib  # eval_lib builds on this module.

  return eval_lib.evaluate(config, workdir, eval_folder)


def likelihood(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> dict:
  """Bits/dim of the test split only (eval_lib.likelihood)."""
  import eval_lib

  return eval_lib.likelihood(config, workdir, eval_folder)


def controllable(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> Any:
  """Inpainting, colourisation, super-resolution or class-conditional sampling."""
  import controllable_lib  # controllable_lib builds on this module.

  return controllable_lib.run_controllable(config, workdir, eval_folder)


def train_classifier(config: Any, workdir: str, **unused: Any) -> Any:
  """Trains the noise-conditional classifier for class-conditional sampling."""
  import controllable_lib

  return controllable_lib.train_classifier(config, workdir)


MODES = {
  "train": train,
  "sample": sample,
  "eval": evaluate,
  "likelihood": likelihood,
  "controllable": controllable,
  "train_classifier": train_classifier,
  "import": import_released,
}
