"""The IO edge of controllable generation: checkpoints, images, the classifier network, PNG grids.

Two modes for main.py (run_lib.MODES):

  run_controllable(config, workdir, eval_folder)   inpaint | colorize | superres | conditional
  train_classifier(config, workdir)                the noise-conditional classifier (App. I.1)

Both read `config.controllable` (see `controllable_settings`); the maths is in
controllable_generation.py. The score model comes from the newest checkpoint of `workdir`
(`<workdir>/checkpoints`, EMA parameters); the classifier from `<classifier_workdir>/checkpoints`
(default `<workdir>/classifier`).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import checkpoints
import controllable_generation as cg
import datasets
import losses
import parallel
import run_lib
import sampling
import writers
from models import utils as mutils

TASKS = ("inpaint", "colorize", "superres", "conditional")
MASKS = ("left_half", "center", "random", "bottom_half")

_DEFAULTS = dict(
  task="inpaint",
  mask="left_half",  # inpainting: which pixels are MISSING
  mask_ratio=0.5,  # share of missing pixels for mask = "random"
  superres_factor=2,
  scale=1.0,  # classifier guidance scale
  labels=None,  # class labels to sample (cycled); None: 0, 1, 2, ...
  classifier_workdir=None,  # default <workdir>/classifier
  num_images=64,
  split="test",
  image_folder=None,  # PNG / JPEG folder instead of the dataset
)


def controllable_settings(config: Any) -> ml_collections.ConfigDict:
  """config.controllable with defaults for missing fields; checks the task and mask names."""
  settings = ml_collections.ConfigDict(_DEFAULTS)
  if "controllable" in config:
    for key, value in config.controllable.items():
      if key in ("classifier",):
        continue
      settings[key] = value
  if settings.task not in TASKS:
    raise ValueError(
      f"config.controllable.task = {settings.task!r}; choose from {', '.join(TASKS)}."
    )
  if settings.mask not in MASKS:
    raise ValueError(
      f"config.controllable.mask = {settings.mask!r}; choose from {', '.join(MASKS)}."
    )
  return settings


def make_mask(kind: str, shape: tuple[int, ...], ratio: float, key: jax.Array) -> jax.Array:
  """Boolean mask [B, H, W, C], True = KNOWN pixel, for images of `shape`; `kind` names the hole."""
  b, h, w, c = shape
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  if kind == "left_half":
    known = cols >= w // 2
  elif kind == "bottom_half":
    known = rows < h // 2
  elif kind == "center":
    known = ~((abs(rows - (h - 1) / 2) < h / 4) & (abs(cols - (w - 1) / 2) < w / 4))
  else:
    return jnp.broadcast_to(jax.random.uniform(key, (b, h, w, 1)) >= ratio, shape)
  return jnp.broadcast_to(known[None, :, :, None], shape)


# --- The classifier network. ----------------------------------------------------------------------


def classifier_config(config: Any) -> ml_collections.ConfigDict:
  """The classifier's own config: a copy of `config` whose model section is
  config.controllable.classifier (default: a small noise-conditional Wide-ResNet)."""
  classifier = copy.deepcopy(config)
  model = ml_collections.ConfigDict(
    dict(
      name="wideresnet_noise_conditional",
      blocks_per_group=1,
      channel_multiplier=2,
      num_classes=10,
      embedding_size=64,
      fourier_scale=16.0,
    )
  )
  if "controllable" in config and "classifier" in config.controllable:
    model.update(config.controllable.classifier)
  classifier.model = model
  return classifier


def get_logits_fn(sde, model) -> cg.LogitsFn:
  """logits_fn(params, x, t) of a network told the noise std sigma(t) (`sde.marginal_prob`)."""

  def logits_fn(params, x, t):
    std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    return model.apply({"params": params}, x, std)

  return logits_fn


def _classifier_manager(config, workdir: str) -> tuple[checkpoints.CheckpointManager, str]:
  settings = controllable_settings(config)
  root = settings.classifier_workdir or os.path.join(workdir, "classifier")
  return checkpoints.CheckpointManager(os.path.join(root, "checkpoints"), keep_recent=2), root


def _classifier_state(config, key):
  """(params, opt_state) of a fresh classifier and its optimizer (config.optim)."""
  cconfig = classifier_config(config)
  experiment_shape = datasets.get_source(config).shape
  model = mutils.get_model(cconfig)
  sde = run_lib.Experiment(config).sde
  x = jnp.zeros((1, *experiment_shape))
  params = model.init(key, x, sde.marginal_prob(x, jnp.full((1,), 0.5))[1])["params"]
  optimizer = losses.get_optimizer(config.optim)
  return model, optimizer, {"params": params, "opt_state": optimizer.init(params)}


def train_classifier(config: Any, workdir: str, **unused: Any) -> dict[str, Any]:
  """Trains the noise-conditional classifier on data perturbed by config.sde (App. I.1).

  Reads config.controllable.classifier (the network), config.controllable.classifier_steps
  (default config.training.n_iters), config.training (batch size, log and snapshot frequencies,
  eps), config.optim. Checkpoints go to <classifier_workdir>/checkpoints.
  """
  del unused
  experiment = run_lib.Experiment(config)
  sde = experiment.sde
  key = jax.random.key(int(config.seed) + 1)
  init_key, key = jax.random.split(key)
  model, optimizer, state = _classifier_state(config, init_key)
  logits_fn = get_logits_fn(sde, model)
  loss_fn = cg.classifier_loss_fn(sde, logits_fn, float(config.training.eps))
  step_fn = cg.classifier_step_fn(loss_fn, optimizer, parallel.AXIS)

  def per_device(state, batch, key):
    params, opt_state, metrics = step_fn(state["params"], state["opt_state"], batch, key)
    return {"params": params, "opt_state": opt_state}, metrics

  train_step = parallel.data_parallel(
    per_device,
    in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
    out_specs=(parallel.REPLICATED, parallel.REPLICATED),
  )
  manager, root = _classifier_manager(config, workdir)
  restored = manager.restore_latest(jax.eval_shape(lambda: state))
  start = 0
  if restored is not None:
    state, start = restored
  state = parallel.replicate(state)
  settings = config.get("controllable", {})
  num_steps = int(settings.get("classifier_steps", config.training.n_iters))
  data = datasets.get_dataset(config, split="train")
  metrics = {}
  for step in range(start + 1, num_steps + 1):
    batch = next(data)
    if "label" not in batch:
      raise ValueError(f"config.data.dataset = {config.data.dataset} has no labels to train on.")
    batch = parallel.shard({"image": batch["image"], "label": batch["label"]})
    state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
    if step % int(config.training.log_freq) == 0:
      logging.info(
        "classifier step %d: %s",
        step,
        ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items()),
      )
    if step % int(config.training.snapshot_freq) == 0 or step == num_steps:
      manager.save(step, state, config)
  manager.close()
  logging.info("Classifier checkpoints in %s.", root)
  return {k: float(v) for k, v in metrics.items()}


def load_classifier(config: Any, workdir: str, sde):
  """(logits_fn, params, num_classes) of the newest classifier checkpoint."""
  model, _, abstract = _classifier_state(config, jax.random.key(0))
  manager, root = _classifier_manager(config, workdir)
  restored = manager.restore_latest(jax.eval_shape(lambda: abstract))
  manager.close()
  if restored is None:
    raise FileNotFoundError(
      f"No classifier checkpoint in {root}/checkpoints: run --mode train_classifier first, or set "
      "config.controllable.classifier_workdir."
    )
  state, _ = restored
  return get_logits_fn(sde, model), state["params"], int(model.num_classes)


# --- Running a task. ------------------------------------------------------------------------------


def _images(config, settings, n: int) -> np.ndarray:
  """n images [n, H, W, C] in the model's data space from the dataset or an image folder."""
  source_config = copy.deepcopy(config)
  if settings.image_folder:
    source_config.data.dataset = "IMAGE_FOLDER"
    source_config.data.data_dir = settings.image_folder
  source_config.eval.batch_size = n
  batches = datasets.get_dataset(source_config, split=settings.split, evaluation=True)
  try:
    batch = next(batches)
  except StopIteration:
    raise ValueError(
      f"The {settings.split} split holds fewer than config.controllable.num_images = {n} images."
    ) from None
  return np.asarray(batch["image"]).reshape(n, *np.asarray(batch["image"]).shape[2:])


def _sampling_kwargs(config, inverse_scaler):
  s = config.sampling
  return dict(
    predictor=sampling.PREDICTORS.get(s.predictor),
    corrector=sampling.CORRECTORS.get(s.corrector),
    inverse_scaler=inverse_scaler,
    snr=float(s.snr),
    n_steps=int(s.n_steps_each),
    probability_flow=bool(s.probability_flow),
    noise_removal=bool(s.noise_removal),
    eps=float(s.eps),
  )


def observation_problem(task: str, settings, images: jax.Array, key: jax.Array):
  """(observation, y, mask, masked input for display) of an observation task on `images`."""
  shape = tuple(images.shape)
  if task == "inpaint":
    mask = make_mask(settings.mask, shape, float(settings.mask_ratio), key)
    return cg.inpainting(), images, mask, jnp.where(mask, images, 0.0)
  if task == "colorize":
    if shape[-1] != 3:
      raise ValueError(
        f"Colourisation needs RGB data (config.data.num_channels = 3); got {shape[-1]}."
      )
    y = cg.colorization_data(images.mean(axis=-1, keepdims=True))
    return cg.colorization(), y, cg.colorization_mask(shape), y
  factor = int(settings.superres_factor)
  y = cg.superresolution_data(cg.downsample(images, factor), factor)
  return cg.superresolution(factor), y, cg.superresolution_mask(shape, factor), y


def _device_split(a: Any) -> jax.Array:
  """A host array [n, ...] as a global array split over the devices (one host)."""
  a = np.asarray(a)
  return parallel.shard(a.reshape(jax.local_device_count(), -1, *a.shape[1:]))


def run_controllable(config: Any, workdir: str, eval_folder: str = "eval", **unused: Any) -> str:
  """Runs config.controllable.task with the newest checkpoint; returns the output directory.

  Writes <workdir>/<eval_folder>/<task>_<step>/: input.png (masked / grey / block image, or
  nothing for conditional), result.png, original.png, and controllable.npz with the arrays
  (in [0, 1]) and labels.
  """
  del unused
  settings = controllable_settings(config)
  experiment = run_lib.Experiment(config, workdir)
  sde = experiment.sde
  n = int(settings.num_images)
  per_device = parallel.per_device(n, "config.controllable.num_images")
  optimizer = losses.get_optimizer(config.optim)
  manager = checkpoints.CheckpointManager.from_config(workdir, config)
  restored = manager.restore_latest(experiment.abstract_state(optimizer))
  manager.close()
  if restored is None:
    raise FileNotFoundError(
      f"No checkpoint in {os.path.join(workdir, 'checkpoints')}: train first."
    )
  state, step = restored
  params = parallel.replicate(state.ema_params)
  key = jax.random.fold_in(jax.random.key(int(config.seed)), step)
  kwargs = _sampling_kwargs(config, experiment.inverse_scaler)
  per_shape = (per_device, *experiment.data_shape)
  arrays = {}
  if settings.task == "conditional":
    logits_fn, classifier_params, num_classes = load_classifier(config, workdir, sde)
    labels = (
      np.resize(np.asarray(settings.labels, np.int32), n)
      if settings.labels is not None
      else np.arange(n, dtype=np.int32) % num_classes
    )
    cg.check_labels(labels, n, num_classes)
    sample = cg.get_conditional_sampler(
      sde,
      experiment.score_fn,
      logits_fn,
      per_shape,
      num_classes,
      scale=float(settings.scale),
      **kwargs,
    )
    run = cg.data_parallel_conditional_sampler(sample, per_device)
    x, nfe = run(key, (params, parallel.replicate(classifier_params)), _device_split(labels))
    arrays.update(result=np.asarray(x), labels=labels)
  else:
    images = jnp.asarray(_images(config, settings, n))
    observation, y, mask, shown = observation_problem(settings.task, settings, images, key)
    sample = cg.get_linear_observation_sampler(
      sde, experiment.score_fn, per_shape, observation, **kwargs
    )
    run = cg.data_parallel_observation_sampler(sample, per_device)
    x, nfe = run(key, params, _device_split(y), _device_split(mask))
    to_image = experiment.inverse_scaler
    arrays.update(
      result=np.asarray(x),
      input=np.asarray(to_image(shown)),
      original=np.asarray(to_image(images)),
    )
  out_dir = os.path.join(workdir, eval_folder, f"{settings.task}_{step}")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    scale = max(1, 64 // int(experiment.data_shape[0]))
    for name in ("input", "result", "original"):
      if name in arrays:
        writers.save_image_grid(os.path.join(out_dir, f"{name}.png"), arrays[name], scale=scale)
    writers.save_npz(os.path.join(out_dir, "controllable.npz"), **arrays)
    with open(os.path.join(out_dir, "info.json"), "w") as f:
      json.dump(
        {"task": settings.task, "step": int(step), "nfe": int(np.asarray(nfe)), "num_images": n}, f
      )
  logging.info("Wrote %s results of step %d to %s.", settings.task, step, out_dir)
  return out_dir
