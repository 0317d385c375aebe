"""Training and sampling loops: `train(config, workdir)` and `sample(config, workdir)`.

A work directory holds

    checkpoints/<step>/       orbax checkpoints of the train state and the config (checkpoints.py)
    tensorboard/              scalars: loss, eval_loss, lr, grad_norm, steps_per_s, images_per_s
    samples/<step>/           samples from the EMA parameters at every snapshot: PNG + npz
    config.json               the config of the latest start

Training resumes from the newest checkpoint that restores cleanly (after a crash or pre-emption),
and continues the same data stream and the same random keys, so an interrupted run ends where an
uninterrupted one does. The step itself is built in `losses` and mapped over every device of every
host by `parallel.data_parallel`; nothing here knows more about the devices than that.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import checkpoints
import datasets
import losses
import parallel
import sampling
import sde_lib
import writers
from models import utils as mutils


class TrainingDivergedError(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def _check_frequencies(config: Any) -> None:
  """Frequencies must be multiples of n_jitted_steps: the loop advances that many steps a call."""
  training = config.training
  n = int(training.n_jitted_steps)
  if n < 1:
    raise ValueError(f"config.training.n_jitted_steps = {n} must be at least 1.")
  for field in ("snapshot_freq", "snapshot_freq_for_preemption", "log_freq", "eval_freq"):
    value = int(training[field])
    if value < 1 or value % n:
      raise ValueError(
        f"config.training.{field} = {value} must be a positive multiple of "
        f"config.training.n_jitted_steps = {n}."
      )


class Experiment:
  """What every mode builds from a config: the SDE, the network, its score, shapes and scalers."""

  def __init__(self, config: Any):
    self.config = config
    self.sde = sde_lib.get_sde(config.sde)
    self.continuous = bool(config.training.continuous)
    self.model = mutils.get_model(config)
    self.score_fn = mutils.get_score_fn(self.sde, self.model, self.continuous)
    self.data_shape = datasets.get_source(config).shape
    self.inverse_scaler = datasets.get_data_inverse_scaler(config)
    self.is_image = len(self.data_shape) == 3

  def init_state(self, key: jax.Array, optimizer) -> losses.TrainState:
    params = mutils.init_params(key, self.model, self.sde, (1, *self.data_shape), self.continuous)
    return losses.init_train_state(params, optimizer)

  def sampler(self, num_samples: int):
    """A data-parallel sampler `sample(key, params) -> (x, nfe)` of `num_samples` examples."""
    per_device = parallel.per_device(num_samples, "config.sampling.batch_size")
    sample = sampling.get_sampler(
      self.config,
      self.sde,
      self.score_fn,
      (per_device, *self.data_shape),
      self.inverse_scaler,
      float(self.config.sampling.eps),
    )
    return sampling.data_parallel_sampler(sample, per_device)


def _stacked_batches(iterator: Iterator[dict], n: int) -> dict:
  """The next `n` host-local batches stacked on a leading steps axis, as global arrays."""
  batches = [next(iterator) for _ in range(n)]
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  return parallel.shard(stacked, leading=1)


def _endless(make: Any) -> Iterator[dict]:
  """Cycles through a finite evaluation iterator, restarting it when it ends."""
  while True:
    yield from make()


def _write_samples(directory: str, samples: np.ndarray, data: np.ndarray | None, is_image: bool):
  os.makedirs(directory, exist_ok=True)
  writers.save_npz(os.path.join(directory, "samples.npz"), samples=samples)
  if is_image:
    scale = max(1, 256 // samples.shape[1])
    writers.save_image_grid(os.path.join(directory, "samples.png"), samples, scale=scale)
  elif samples.shape[-1] == 2:
    writers.scatter_png(os.path.join(directory, "samples.png"), samples, data)


def train(config: Any, workdir: str, **unused: Any) -> losses.TrainState:
  """Trains `config`'s model in `workdir`, resuming from its newest good checkpoint.

  Returns the final train state. Raises `TrainingDivergedError` if the loss becomes non-finite
  (the last good checkpoint stays the newest), and `ValueError` naming the field for a bad config,
  before anything compiles.
  """
  del unused
  _check_frequencies(config)
  training = config.training
  n_jitted = int(training.n_jitted_steps)
  experiment = Experiment(config)
  datasets.batch_sizes(config)  # Batch-size errors before anything compiles.
  datasets.batch_sizes(config, evaluation=True)
  sample_count = int(config.sampling.get("batch_size", config.eval.batch_size))
  if training.snapshot_sampling:
    parallel.per_device(sample_count, "config.sampling.batch_size")

  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  optimizer = losses.get_optimizer(config.optim)
  lr_schedule = losses.get_lr_schedule(config.optim)
  key = jax.random.key(int(config.seed))
  init_key, train_key, eval_key, sample_key = jax.random.split(key, 4)
  state = jax.jit(experiment.init_state, static_argnums=1)(init_key, optimizer)
  state = parallel.replicate(state)

  manager = checkpoints.CheckpointManager.from_config(workdir, config)
  restored = manager.restore_latest(state)
  initial_step = 0
  if restored is not None:
    state, initial_step = restored
    state = parallel.replicate(state)
    logging.info("Resumed from the checkpoint of step %d.", initial_step)
  num_steps = int(training.n_iters)

  train_loss = losses.get_loss_fn(config, experiment.sde, experiment.score_fn, train=True)
  step_fn = losses.get_step_fn(
    train_loss, optimizer, float(config.model.ema_rate), parallel.AXIS, lr_schedule
  )
  multi_step = parallel.data_parallel(
    losses.get_multi_step_fn(step_fn, n_jitted),
    in_specs=(parallel.REPLICATED, P(None, parallel.AXIS), parallel.REPLICATED),
    out_specs=(parallel.REPLICATED, parallel.REPLICATED),
    donate_argnums=(0,),
  )
  eval_loss = losses.get_loss_fn(config, experiment.sde, experiment.score_fn, train=False)
  eval_step = parallel.data_parallel(
    losses.get_eval_step_fn(eval_loss, parallel.AXIS),
    in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
    out_specs=parallel.REPLICATED,
  )
  sampler = experiment.sampler(sample_count) if training.snapshot_sampling else None

  # The data stream continues where the checkpoint left it: batch k feeds step k.
  train_iter = datasets.get_dataset(config, split="train")
  train_iter = itertools.islice(train_iter, initial_step, None)
  eval_iter = _endless(lambda: datasets.get_dataset(config, split="test", evaluation=True))
  reference = None
  if not experiment.is_image and training.snapshot_sampling:
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
  last_log = (time.perf_counter(), step)
  try:
    while step + n_jitted <= num_steps:
      batches = _stacked_batches(train_iter, n_jitted)
      state, metrics = multi_step(state, batches, train_key)
      loss = np.asarray(metrics["loss"])
      if not np.all(np.isfinite(loss)):
        raise TrainingDivergedError(
          f"The training loss became {loss[~np.isfinite(loss)][0]} at step {step + 1}; stopped. "
          f"The newest checkpoint ({manager.latest_step()}) is the last good state. Lower "
          "config.optim.lr, check config.optim.grad_clip, or inspect the data."
        )
      step += n_jitted
      progress.update(n_jitted)

      if step % int(training.log_freq) == 0:
        now = time.perf_counter()
        steps_per_s = (step - last_log[1]) / max(now - last_log[0], 1e-9)
        last_log = (now, step)
        scalars = {k: float(np.asarray(v)[-1]) for k, v in metrics.items()}
        scalars.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * global_batch)
        writer.scalars(scalars, step)
        progress.set_postfix(loss=f"{scalars['loss']:.4g}")
        logging.info("step %d: %s", step, ", ".join(f"{k} {v:.5g}" for k, v in scalars.items()))

      if step % int(training.eval_freq) == 0:
        eval_batch = parallel.shard(next(eval_iter))
        eval_metrics = eval_step(state, eval_batch, jax.random.fold_in(eval_key, step))
        writer.scalar("eval_loss", eval_metrics["loss"], step)

      if manager.should_save(step) or step + n_jitted > num_steps:
        manager.save(step, state, config)

      if sampler is not None and step % int(training.snapshot_freq) == 0:
        samples, nfe = sampler(jax.random.fold_in(sample_key, step), state.ema_params)
        samples = np.asarray(jax.device_get(samples))
        if jax.process_index() == 0:
          _write_samples(
            os.path.join(workdir, "samples", str(step)),
            samples,
            reference,
            experiment.is_image,
          )
        writer.scalar("sample_nfe", nfe, step)
        logging.info("step %d: wrote %d samples (NFE %d).", step, len(samples), int(nfe))
  finally:
    progress.close()
    writer.close()
    manager.close()
  return state


def sample(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> None:
  """Draws `config.eval.num_samples` samples from the newest checkpoint's EMA parameters."""
  del unused
  experiment = Experiment(config)
  batch = int(config.eval.batch_size)
  num_samples = int(config.eval.num_samples)
  if num_samples % batch:
    raise ValueError(
      f"config.eval.num_samples = {num_samples} must be a multiple of "
      f"config.eval.batch_size = {batch}."
    )
  sampler = experiment.sampler(batch)
  optimizer = losses.get_optimizer(config.optim)
  abstract = jax.eval_shape(experiment.init_state, jax.random.key(0), optimizer)
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
    chunks.append(np.asarray(jax.device_get(x)))
  samples = np.concatenate(chunks)
  if jax.process_index() == 0:
    _write_samples(out_dir, samples, None, experiment.is_image)
    with open(os.path.join(out_dir, "info.json"), "w") as f:
      json.dump({"step": int(step), "num_samples": len(samples), "nfe": int(nfe)}, f)
  logging.info("Wrote %d samples of step %d to %s.", len(samples), step, out_dir)


MODES = {"train": train, "sample": sample}
