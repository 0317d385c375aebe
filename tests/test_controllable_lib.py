"""controllable_lib end to end on the digits MLP config: a random-init checkpoint, a few steps.

Checks the IO edge, not sample quality: the run restores the checkpoint, writes the PNG grids and
the npz, and the known pixels of the inpainted digits are the original ones (within the uint8-free
float path: exactly, as the mask is in pixel space and the inverse scaler is affine).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import checkpoints
import controllable_lib
import losses
import run_lib
from configs.digits import digits_inpaint


def small_config():
  config = digits_inpaint.get_config()
  # 30 steps: fewer make the DDPM betas linspace(0.1, 20) / N exceed 1 (reverse diffusion NaN).
  config.sde.N = 30
  config.model.hidden = 32
  config.model.num_layers = 2
  config.controllable.num_images = 16
  config.training.batch_size = 16
  config.training.snapshot_freq = 2
  config.training.log_freq = 1
  config.controllable.classifier_steps = 2
  config.controllable.classifier.channel_multiplier = 1
  config.controllable.classifier.embedding_size = 8
  return config


def save_random_checkpoint(config, workdir):
  experiment = run_lib.Experiment(config)
  optimizer = losses.get_optimizer(config.optim)
  state = experiment.init_state(jax.random.key(0), optimizer)
  with checkpoints.CheckpointManager.from_config(workdir, config) as manager:
    manager.save(1, state, config)


def test_inpainting_run_writes_grids_and_keeps_known_pixels(tmp_path):
  config = small_config()
  workdir = str(tmp_path)
  save_random_checkpoint(config, workdir)
  out = controllable_lib.run_controllable(config, workdir, "eval")
  for name in ("input.png", "result.png", "original.png", "controllable.npz", "info.json"):
    assert os.path.exists(os.path.join(out, name)), name
  arrays = np.load(os.path.join(out, "controllable.npz"))
  assert np.all(np.isfinite(arrays["result"]))
  known = np.broadcast_to(np.arange(8)[None, None, :, None] >= 4, arrays["result"].shape)
  np.testing.assert_allclose(arrays["result"][known], arrays["original"][known], atol=1e-6)
  assert not np.allclose(arrays["result"][~known], arrays["original"][~known], atol=1e-2)
  # Super-resolution x2 keeps the 2x2 block means of the original, up to float32 round-off of the
  # transform, relative to the largest value (a random-init model fills in large values).
  config.controllable.task = "superres"
  arrays = np.load(
    os.path.join(controllable_lib.run_controllable(config, workdir, "sr"), "controllable.npz")
  )
  assert np.all(np.isfinite(arrays["result"]))
  means = lambda x: x.reshape(16, 4, 2, 4, 2).mean(axis=(2, 4))
  tol = 8 * np.finfo(np.float32).eps * np.abs(arrays["result"]).max()
  np.testing.assert_allclose(means(arrays["result"]), means(arrays["original"]), atol=tol)


@pytest.mark.slow
def test_classifier_trains_and_conditional_run_writes_results(tmp_path):
  config = small_config()
  workdir = str(tmp_path)
  save_random_checkpoint(config, workdir)
  metrics = controllable_lib.train_classifier(config, workdir)
  assert np.isfinite(metrics["loss"])
  config.controllable.task = "conditional"
  config.controllable.labels = [3, 7]
  out = controllable_lib.run_controllable(config, workdir, "eval")
  arrays = np.load(os.path.join(out, "controllable.npz"))
  np.testing.assert_array_equal(arrays["labels"], np.resize([3, 7], 16))
  assert arrays["result"].shape == (16, 8, 8, 1)
  assert np.all(np.isfinite(arrays["result"]))
  config.controllable.labels = [10]
  with pytest.raises(ValueError, match="outside the classifier's range"):
    controllable_lib.run_controllable(config, workdir, "eval")
