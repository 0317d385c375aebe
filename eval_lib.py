"""Evaluation loop: `evaluate(config, workdir)` and `likelihood(config, workdir)` (DESIGN.md,
"Evaluation"; Song et al. 2021, Sec. 4.3 and Tables 2-3).

For every checkpoint of the range `config.eval.begin_ckpt` .. `config.eval.end_ckpt`, with the EMA
parameters, each enabled stage:

- loss (`eval.enable_loss`): the evaluation loss (`losses.get_loss_fn(train=False)`) averaged over
  the test split;
- samples (`eval.enable_sampling`): `eval.num_samples` samples in batches of `eval.batch_size`,
  each batch sharded over every device (`sampling.data_parallel_sampler`), saved as npz and PNG,
  then the sample-quality metric: FID, KID and Inception Score against cached dataset statistics
  (image datasets, `eval.metric = "inception"`) or the offline digits metric (`"digits"`);
- bits/dim (`eval.enable_bpd`): of the `eval.bpd_dataset` split through the probability-flow ODE,
  with uniform dequantisation of the data's L quantisation levels, averaged over
  `eval.bpd_num_repeats` dequantisations.

Checkpoint numbers. As in the reference, checkpoint k is the one of step k x
`config.training.snapshot_freq` (the periodic snapshots `run_lib.train` keeps), so the released
configs' begin/end values select the same checkpoints. `eval.end_ckpt = None` means up to the newest
periodic snapshot present. Every checkpoint of the range must exist.

Layout of `<workdir>/<eval_folder>/`:

    step_<S>/loss.json                    {"loss", "num_batches"}
    step_<S>/samples/batch_<i>.npz        samples (uint8 images, or float32 vectors), nfe, and for
                                          the Inception metric its pool3 and logits
    step_<S>/samples/batch_<i>.png        the batch as an image grid (or a scatter plot for 2-D data)
    step_<S>/sample_metrics.json          FID / KID / IS or the digits metric, num_samples, NFE
    step_<S>/bpd/repeat_<r>_batch_<j>.npz bits/dim of one batch of one repeat
    step_<S>/bpd.json                     {"bpd", "bpd_std", "bpd_num_repeats", "bpd_num_examples"}
    step_<S>/results.json, report.npz     the stages above merged
    results.json                          {"<S>": results of step S} over every evaluated step
    tensorboard/                          the scalars of each newly computed stage, at step S

Resuming: every file is written atomically (temporary name, then rename), and a stage or batch whose
file exists is read, never recomputed or overwritten. Each batch's keys are folded from the seed,
the step and the batch index, so an evaluation killed at any point and restarted ends with the same
results as an uninterrupted one; a second run over finished checkpoints only reads files.

Bad input fails before anything is restored or compiled: an empty or incomplete checkpoint range,
`eval.num_samples` not a multiple of `eval.batch_size` (or a batch that does not split over the
devices), a missing Inception weights file, dataset statistics of another resolution.

Config fields beyond the released schema (read with these defaults when absent): see `EVAL_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

import checkpoints
import datasets
import evaluation
import likelihood as likelihood_lib
import losses
import parallel
import writers
from run_lib import Experiment, to_host

EVAL_DEFAULTS: dict[str, Any] = {
  # "auto": the digits metric for DIGITS, the Inception metrics for other image data, none for
  # vector data; or "inception", "digits", "none".
  "metric": "auto",
  # The FID Inception weights (evaluation.INCEPTION_FILENAME); needed only by the Inception metric.
  "inception_path": None,
  # Cache of dataset statistics and of the digits classifier (None: evaluation.default_cache_dir()).
  "cache_dir": None,
  # A statistics file to compare with (None: computed once and cached in cache_dir).
  "stats_path": None,
  "stats_split": "train",  # the reference's FID statistics are of the CIFAR-10 training set
  "inception_batch_size": 50,
  "kid_subset_size": 1000,
  "kid_num_subsets": 100,
  "hutchinson_type": "rademacher",
  "bpd_rtol": 1e-5,
  "bpd_atol": 1e-5,
  "bpd_eps": 1e-5,
}
METRICS = ("inception", "digits", "none")


def eval_field(config: Any, name: str) -> Any:
  """`config.eval.<name>`, or its default from `EVAL_DEFAULTS` when the config lacks it."""
  return config.eval.get(name, EVAL_DEFAULTS[name])


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------


def _is_writer() -> bool:
  return jax.process_index() == 0


def _write_json(path: str, value: dict) -> None:
  if _is_writer():
    text = json.dumps(value, indent=2, sort_keys=True)

    def write(tmp: str) -> None:
      with open(tmp, "w") as f:
        f.write(text)

    writers._atomic_write(path, write)


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


class _LazyWriter:
  """A `writers.MetricWriter` created at the first scalar: a run that only reads writes nothing."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer: writers.MetricWriter | None = None

  def scalars(self, values: dict[str, Any], step: int) -> None:
    values = {k: v for k, v in values.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    if values:
      if self._writer is None:
        self._writer = writers.MetricWriter(self.logdir)
      self._writer.scalars(values, step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


# ----------------------------------------------------------------------------------------------
# The plan: every check, before anything long.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
  """What an evaluation runs, checked (`plan_evaluation`).

  Attributes:
    steps: training steps of the checkpoints to evaluate, ascending.
    stages: the enabled stages among "loss", "samples", "bpd".
    metric: the sample-quality metric: "inception", "digits" or "none".
    num_batches: sample batches per checkpoint; batch_size: samples per batch (global).
    inception_path: the Inception weights file (metric "inception").
    stats_path: the dataset statistics file (metric "inception"; computed if absent).
    cache_dir: the cache of statistics and of the digits classifier.
  """

  steps: list[int]
  stages: tuple[str, ...]
  metric: str
  num_batches: int
  batch_size: int
  inception_path: str | None
  stats_path: str | None
  cache_dir: str


def checkpoint_steps(config: Any, available: Iterable[int]) -> list[int]:
  """The steps of checkpoints `config.eval.begin_ckpt` .. `end_ckpt` (see the module docstring).

  Raises:
    ValueError: an empty range; FileNotFoundError: a checkpoint of the range is missing.
  """
  available = sorted(int(s) for s in available)
  freq = int(config.training.snapshot_freq)
  begin = int(config.eval.begin_ckpt)
  end = config.eval.end_ckpt
  if end is None:
    periodic = [s // freq for s in available if s % freq == 0 and s // freq >= begin]
    if not periodic:
      raise FileNotFoundError(
        f"No periodic checkpoint (step a multiple of config.training.snapshot_freq = {freq}) "
        f"from config.eval.begin_ckpt = {begin} on; the checkpoints hold steps {available}. "
        "Train longer or lower config.eval.begin_ckpt."
      )
    end = max(periodic)
  end = int(end)
  if begin < 0 or end < begin:
    raise ValueError(
      f"config.eval.begin_ckpt = {begin} .. config.eval.end_ckpt = {end} is an empty range of "
      "checkpoints: set begin_ckpt <= end_ckpt (checkpoint k is the one of step k x "
      f"config.training.snapshot_freq = {freq})."
    )
  steps = [k * freq for k in range(begin, end + 1)]
  missing = [s for s in steps if s not in available]
  if missing:
    raise FileNotFoundError(
      f"config.eval.begin_ckpt = {begin} .. end_ckpt = {end} asks for the checkpoints of steps "
      f"{steps} (checkpoint k is step k x config.training.snapshot_freq = {freq}), but steps "
      f"{missing} are not in the work directory, which holds {available or 'no checkpoint'}. "
      "Train further, or set begin_ckpt / end_ckpt (None: up to the newest) to existing ones."
    )
  return steps


def _resolve_metric(config: Any, experiment: Experiment) -> str:
  metric = str(eval_field(config, "metric"))
  if metric == "auto":
    if not experiment.is_image:
      return "none"
    return "digits" if str(config.data.dataset).upper() == "DIGITS" else "inception"
  if metric not in METRICS:
    raise ValueError(f"config.eval.metric = {metric!r}; valid choices: auto, {', '.join(METRICS)}.")
  if metric == "digits" and str(config.data.dataset).upper() != "DIGITS":
    raise ValueError(
      f"config.eval.metric = 'digits' needs config.data.dataset = 'DIGITS', not "
      f"{config.data.dataset!r}: use 'inception'."
    )
  if metric == "inception" and not experiment.is_image:
    raise ValueError("config.eval.metric = 'inception' needs image data; use 'none'.")
  return metric


def plan_evaluation(
  config: Any, workdir: str, stages: tuple[str, ...], experiment: Experiment
) -> Plan:
  """Checks everything an evaluation needs, in about a second; raises a clear error otherwise."""
  if not stages:
    raise ValueError(
      "Nothing to evaluate: enable config.eval.enable_loss, enable_sampling or enable_bpd."
    )
  batch = int(config.eval.batch_size)
  parallel.per_device(batch, "config.eval.batch_size")
  num_samples = int(config.eval.num_samples) if "samples" in stages else 0
  if "samples" in stages and (num_samples <= 0 or num_samples % batch):
    raise ValueError(
      f"config.eval.num_samples = {num_samples} must be a positive multiple of "
      f"config.eval.batch_size = {batch} (the global sample batch): e.g. "
      f"{max(1, num_samples // batch) * batch}."
    )
  if "bpd" in stages:
    if not experiment.is_image:
      raise ValueError(
        "Bits/dim (config.eval.enable_bpd) are defined for quantised images; "
        f"config.data.dataset = {config.data.dataset!r} is vector data."
      )
    if int(config.eval.bpd_num_repeats) < 1:
      raise ValueError(f"config.eval.bpd_num_repeats = {config.eval.bpd_num_repeats} must be >= 1.")
    likelihood_lib.DIVERGENCES.get(str(eval_field(config, "hutchinson_type")))
  metric = _resolve_metric(config, experiment) if "samples" in stages else "none"
  cache_dir = eval_field(config, "cache_dir") or evaluation.default_cache_dir()
  inception_path = stats_path = None
  if metric == "inception":
    inception_path = eval_field(config, "inception_path")
    if inception_path is None or not os.path.isfile(inception_path):
      where = (
        "config.eval.inception_path is not set"
        if inception_path is None
        else f"config.eval.inception_path = {inception_path!r} does not exist"
      )
      raise FileNotFoundError(
        f"FID / KID / IS need the FID Inception weights, but {where}. Download "
        f"{evaluation.INCEPTION_FILENAME} from {evaluation.INCEPTION_URL} (it is read without "
        "PyTorch), then pass --config.eval.inception_path=/path/to/"
        f"{evaluation.INCEPTION_FILENAME}; or set config.eval.metric = 'none'."
      )
    resolution = int(experiment.data_shape[0])
    stats_path = eval_field(config, "stats_path") or evaluation.statistics_path(
      cache_dir, str(config.data.dataset), str(eval_field(config, "stats_split")), resolution
    )
    if eval_field(config, "stats_path") and not os.path.isfile(stats_path):
      raise FileNotFoundError(f"config.eval.stats_path = {stats_path!r} does not exist.")
    if os.path.isfile(stats_path):
      evaluation.load_statistics(stats_path, resolution)  # raises at another resolution
  manager = checkpoints.CheckpointManager.from_config(workdir, config)
  try:
    available = manager.steps()
  finally:
    manager.close()
  steps = checkpoint_steps(config, available)
  return Plan(
    steps=steps,
    stages=stages,
    metric=metric,
    num_batches=num_samples // batch,
    batch_size=batch,
    inception_path=inception_path,
    stats_path=stats_path,
    cache_dir=cache_dir,
  )


# ----------------------------------------------------------------------------------------------
# The stages.
# ----------------------------------------------------------------------------------------------


class Evaluator:
  """The jitted functions of an evaluation, built once and used for every checkpoint."""

  def __init__(self, config: Any, plan: Plan, experiment: Experiment):
    self.config, self.plan, self.experiment = config, plan, experiment
    self.optimizer = losses.get_optimizer(config.optim)
    self.abstract_state = jax.eval_shape(
      lambda key: experiment.init_state(key, self.optimizer), jax.random.key(0)
    )
    self._sampler = self._eval_step = self._bpd_fn = self._inception_fn = None

  # --- Builders (lazy: a run that only reads compiles nothing). ----------------------------------

  def eval_step(self) -> Callable:
    if self._eval_step is None:
      loss_fn = losses.get_loss_fn(
        self.config, self.experiment.sde, self.experiment.score_fn, train=False
      )
      self._eval_step = parallel.data_parallel(
        losses.get_eval_step_fn(loss_fn, parallel.AXIS),
        in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
        out_specs=parallel.REPLICATED,
      )
    return self._eval_step

  def sampler(self) -> Callable:
    if self._sampler is None:
      self._sampler = self.experiment.sampler(self.plan.batch_size)
    return self._sampler

  def inception_fn(self) -> Callable:
    if self._inception_fn is None:
      params = evaluation.load_inception_params(self.plan.inception_path)
      self._inception_fn = evaluation.get_inception_fn(params)
    return self._inception_fn

  def bpd_fn(self) -> Callable:
    """`bpd_fn(key, params, x [B, ...]) -> (bpd [B], nfe [])`, data-parallel; x quantised, model space."""
    if self._bpd_fn is None:
      config, experiment = self.config, self.experiment
      levels = int(datasets.get_source(config).levels)
      scaler = datasets.get_data_scaler(config)
      inverse_scaler = experiment.inverse_scaler
      bpd_of = likelihood_lib.get_likelihood_fn(
        experiment.sde,
        experiment.score_fn,
        inverse_scaler,
        hutchinson_type=str(eval_field(config, "hutchinson_type")),
        rtol=float(eval_field(config, "bpd_rtol")),
        atol=float(eval_field(config, "bpd_atol")),
        eps=float(eval_field(config, "bpd_eps")),
        dequantize=False,
      )
      # likelihood.bits_per_dim counts 8-bit bins (offset 8 = log2 256); data of L levels have bins
      # 1 / L wide: bpd_L = bpd_256 - 8 + log2 L.
      offset = float(np.log2(levels) - 8.0)

      def per_device(key, params, x):
        key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
        dequantize_key, likelihood_key = jax.random.split(key)
        # Uniform dequantisation (Song et al. 2021, App. D): value v of L levels -> (v + u) / L.
        y = jnp.round(inverse_scaler(x) * (levels - 1))
        y = (y + jax.random.uniform(dequantize_key, x.shape, x.dtype)) / levels
        bpd, _, nfe = bpd_of(likelihood_key, params, scaler(y))
        return bpd + offset, jax.lax.pmax(nfe, parallel.AXIS)

      self._bpd_fn = parallel.data_parallel(
        per_device,
        in_specs=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED),
        out_specs=(parallel.SHARDED, parallel.REPLICATED),
      )
    return self._bpd_fn

  def restore(self, workdir: str, step: int) -> losses.TrainState:
    manager = checkpoints.CheckpointManager.from_config(workdir, self.config)
    try:
      return manager.restore(step, self.abstract_state)
    finally:
      manager.close()

  # --- Stages. ---------------------------------------------------------------------------------

  def loss(self, state: losses.TrainState, key: jax.Array) -> dict:
    """The evaluation loss of the EMA parameters, averaged over the test split's batches."""
    values = []
    batches = datasets.get_dataset(self.config, split="test", evaluation=True)
    for i, batch in enumerate(batches):
      metrics = self.eval_step()(state, parallel.shard(batch), jax.random.fold_in(key, i))
      values.append(float(to_host(metrics["loss"])))
    if not values:
      raise ValueError(
        f"The test split has fewer examples than config.eval.batch_size = "
        f"{self.config.eval.batch_size}: no evaluation batch."
      )
    return {"loss": float(np.mean(values)), "num_batches": len(values)}

  def sample_batch(self, params: Any, key: jax.Array, path: str) -> None:
    """Draws one batch of samples and writes it (PNG first, then the npz that marks it done)."""
    x, nfe = self.sampler()(key, params)
    x = to_host(x)
    record: dict[str, np.ndarray] = {"nfe": np.int64(to_host(nfe))}
    if self.experiment.is_image:
      record["samples"] = writers.to_uint8(x)
      images = record["samples"].astype(np.float32) / 255.0
      if self.plan.metric == "inception":
        pool3, logits = evaluation.batched_features(
          self.inception_fn(), images, int(eval_field(self.config, "inception_batch_size"))
        )
        record.update(pool3=pool3.astype(np.float32), logits=logits.astype(np.float32))
    else:
      record["samples"] = np.asarray(x, np.float32)
    if _is_writer():
      png = path[: -len(".npz")] + ".png"
      if self.experiment.is_image:
        writers.save_image_grid(png, images, scale=max(1, 256 // images.shape[1]))
      elif x.shape[-1] == 2:
        writers.scatter_png(png, x)
      writers.save_npz(path, **record)

  def sample_metrics(self, batch_files: list[str]) -> dict:
    """The sample-quality metric over every batch file."""
    records = [_read_npz(f) for f in batch_files]
    samples = np.concatenate([r["samples"] for r in records])
    result: dict[str, Any] = {
      "num_samples": int(samples.shape[0]),
      "sample_nfe": float(np.mean([r["nfe"] for r in records])),
    }
    if self.plan.metric == "digits":
      digits = evaluation.digits_metric(
        samples.astype(np.float32) / 255.0, cache_dir=self.plan.cache_dir
      )
      result.update({f"digits_{k}": v for k, v in digits.items() if k != "num_samples"})
    elif self.plan.metric == "inception":
      stats = self.statistics()
      pool3 = np.concatenate([r["pool3"] for r in records])
      logits = np.concatenate([r["logits"] for r in records])
      mu, sigma = evaluation.feature_statistics(pool3)
      result["fid"] = evaluation.frechet_distance(mu, sigma, stats["mu"], stats["sigma"])
      result["kid"], result["kid_std"] = evaluation.kernel_inception_distance(
        jax.random.key(0),
        pool3,
        stats["features"],
        num_subsets=int(eval_field(self.config, "kid_num_subsets")),
        subset_size=int(eval_field(self.config, "kid_subset_size")),
      )
      splits = min(10, logits.shape[0])
      result["inception_score"], result["inception_score_std"] = evaluation.inception_score(
        logits, splits
      )
    return result

  def statistics(self) -> dict[str, np.ndarray]:
    """The dataset's Inception statistics: the configured file, or computed once and cached."""
    resolution = int(self.experiment.data_shape[0])
    if os.path.isfile(self.plan.stats_path):
      return evaluation.load_statistics(self.plan.stats_path, resolution)
    split = str(eval_field(self.config, "stats_split"))
    inverse = self.experiment.inverse_scaler
    batches = (
      np.asarray(inverse(b["image"]))
      for b in datasets.get_dataset(
        self.config, split=split, evaluation=True, uniform_dequantization=False
      )
    )
    logging.info(
      "Computing the Inception statistics of %s/%s (once).", self.config.data.dataset, split
    )
    return evaluation.dataset_statistics(
      self.inception_fn(),
      batches,
      cache_dir=os.path.dirname(self.plan.stats_path),
      dataset=str(self.config.data.dataset),
      split=split,
      resolution=resolution,
    )


def _sample_stage(ev: Evaluator, state, key, folder: str, step: int) -> list[str]:
  """Writes the sample batches not yet on disk; returns every batch file, in order."""
  files = [os.path.join(folder, f"batch_{i:05d}.npz") for i in range(ev.plan.num_batches)]
  todo = [i for i, f in enumerate(files) if not os.path.exists(f)]
  if todo:
    params = state.ema_params
    progress = tqdm(
      total=len(files),
      initial=len(files) - len(todo),
      desc=f"samples of step {step}",
      unit="batch",
      disable=not _is_writer(),
      dynamic_ncols=True,
      mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    try:
      for i in todo:
        ev.sample_batch(params, jax.random.fold_in(key, i), files[i])
        progress.update(1)
    finally:
      progress.close()
  return files


def _bpd_stage(ev: Evaluator, state, key, folder: str, step: int) -> dict:
  """Bits/dim of the bpd split under `bpd_num_repeats` dequantisations; one file per batch."""
  config = ev.config
  repeats = int(config.eval.bpd_num_repeats)
  values = []
  progress = tqdm(desc=f"bits/dim of step {step}", unit="batch", disable=not _is_writer())
  try:
    for r in range(repeats):
      batches = datasets.get_dataset(
        config, split=str(config.eval.bpd_dataset), evaluation=True, uniform_dequantization=False
      )
      for j, batch in enumerate(batches):
        path = os.path.join(folder, f"repeat_{r:03d}_batch_{j:05d}.npz")
        if os.path.exists(path):
          values.append(_read_npz(path)["bpd"])
        else:
          batch_key = jax.random.fold_in(jax.random.fold_in(key, r), j)
          bpd, nfe = ev.bpd_fn()(batch_key, state.ema_params, parallel.shard(batch["image"]))
          values.append(to_host(bpd))
          if _is_writer():
            writers.save_npz(path, bpd=values[-1], nfe=np.int64(to_host(nfe)))
        progress.update(1)
  finally:
    progress.close()
  if not values:
    raise ValueError(
      f"The {config.eval.bpd_dataset} split has fewer examples than config.eval.batch_size = "
      f"{config.eval.batch_size}: no bits/dim batch."
    )
  bpd = np.concatenate(values)
  return {
    "bpd": float(bpd.mean()),
    "bpd_std": float(bpd.std()),
    "bpd_num_repeats": repeats,
    "bpd_num_examples": int(bpd.size),
  }


def _evaluate_step(ev: Evaluator, workdir: str, out: str, step: int, tb: _LazyWriter) -> dict:
  """Runs the stages of one checkpoint that have no result file yet; returns its merged results."""
  folder = os.path.join(out, f"step_{step}")
  stage_files = {
    "loss": os.path.join(folder, "loss.json"),
    "samples": os.path.join(folder, "sample_metrics.json"),
    "bpd": os.path.join(folder, "bpd.json"),
  }
  todo = [s for s in ev.plan.stages if not os.path.exists(stage_files[s])]
  if todo:
    logging.info("Step %d: computing %s.", step, ", ".join(todo))
    state = ev.restore(workdir, step)
    base = jax.random.fold_in(jax.random.key(int(ev.config.seed)), step)
    loss_key, sample_key, bpd_key = jax.random.split(base, 3)
    for stage in todo:
      if stage == "loss":
        result = ev.loss(state, loss_key)
      elif stage == "samples":
        files = _sample_stage(ev, state, sample_key, os.path.join(folder, "samples"), step)
        result = ev.sample_metrics(files)
      else:
        result = _bpd_stage(ev, state, bpd_key, os.path.join(folder, "bpd"), step)
      _write_json(stage_files[stage], result)
      tb.scalars(result, step)
      logging.info("Step %d, %s: %s", step, stage, result)
  results: dict[str, Any] = {"step": step}
  for stage in ("loss", "samples", "bpd"):
    stored = _read_json(stage_files[stage])
    if stored is not None:
      results.update(stored)
  if todo:
    _write_json(os.path.join(folder, "results.json"), results)
    if _is_writer():
      writers.save_npz(
        os.path.join(folder, "report.npz"),
        **{k: np.asarray(v) for k, v in results.items() if isinstance(v, (int, float))},
      )
  return results


def _run(config: Any, workdir: str, eval_folder: str, stages: tuple[str, ...]) -> dict:
  experiment = Experiment(config, workdir)
  plan = plan_evaluation(config, workdir, stages, experiment)
  out = os.path.join(workdir, eval_folder)
  evaluator = Evaluator(config, plan, experiment)
  tb = _LazyWriter(os.path.join(out, "tensorboard"))
  summary_path = os.path.join(out, "results.json")
  summary = _read_json(summary_path) or {}
  try:
    for step in plan.steps:
      results = _evaluate_step(evaluator, workdir, out, step, tb)
      if summary.get(str(step)) != results:
        summary[str(step)] = results
        _write_json(summary_path, summary)
  finally:
    tb.close()
  return {step: summary[str(step)] for step in plan.steps}


def evaluate(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> dict:
  """Evaluates the checkpoints of `config.eval.begin_ckpt` .. `end_ckpt` (module docstring).

  Returns:
    {step: results}, results holding the enabled stages' numbers: loss; num_samples, sample_nfe
    and fid / kid / inception_score or digits_*; bpd, bpd_std.
  """
  del unused
  stages = tuple(
    stage
    for stage, field in (
      ("loss", "enable_loss"),
      ("samples", "enable_sampling"),
      ("bpd", "enable_bpd"),
    )
    if bool(config.eval.get(field, False))
  )
  return _run(config, workdir, eval_folder, stages)


def likelihood(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> dict:
  """Bits/dim only, over the same checkpoints as `evaluate` (its "bpd" stage, whatever
  `config.eval.enable_bpd` says)."""
  del unused
  return _run(config, workdir, eval_folder, ("bpd",))
