"""writers.py: PNG grids and scatter plots read back through Pillow, npz, TensorBoard scalars."""

from __future__ import annotations

import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import writers


def levels(shape, seed=0) -> np.ndarray:
  """Random images whose values k / 255 map exactly to the 8-bit levels k."""
  k = np.random.default_rng(seed).integers(0, 256, shape)
  return k / 255.0, k.astype(np.uint8)


def test_grey_grid_layout_and_pixels(tmp_path):
  images, k = levels((5, 3, 4, 1))
  path = tmp_path / "grid.png"
  writers.save_image_grid(path, images, nrow=3, padding=1, pad_value=0.5)
  png = Image.open(path)
  assert png.mode == "L"
  # 2 rows of 3: height 2 (3 + 1) + 1 = 9, width 3 (4 + 1) + 1 = 16.
  assert png.size == (16, 9)
  grid = np.asarray(png)
  for i in range(5):
    top, left = 1 + (i // 3) * 4, 1 + (i % 3) * 5
    np.testing.assert_array_equal(grid[top : top + 3, left : left + 4], k[i, ..., 0])
  # Separators and the unused sixth slot hold pad_value: floor(0.5 * 255 + 0.5) = 128.
  assert np.all(grid[0] == 128) and np.all(grid[:, 0] == 128)
  assert np.all(grid[5:8, 11:15] == 128)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_rgb_grid_scaled_and_out_of_range_values(tmp_path):
  images, k = levels((4, 2, 2, 3), seed=1)
  images[0, 0, 0] = [1.5, -0.2, np.nan]  # clipped to 1, clipped to 0, NaN -> 0
  k[0, 0, 0] = [255, 0, 0]
  path = tmp_path / "rgb.png"
  writers.save_image_grid(path, images, padding=0, scale=3)
  png = Image.open(path)
  assert png.mode == "RGB" and png.size == (2 * 2 * 3, 2 * 2 * 3)  # 2 x 2 grid, magnified 3x
  grid = np.asarray(png)
  expected = k.reshape(2, 2, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(4, 4, 3)
  np.testing.assert_array_equal(grid[::3, ::3], expected)
  np.testing.assert_array_equal(grid[2::3, 2::3], expected)  # each pixel is a 3x3 block


def test_grid_rejects_other_shapes(tmp_path):
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    writers.save_image_grid(tmp_path / "x.png", np.zeros((4, 8, 8)))
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    writers.save_image_grid(tmp_path / "x.png", np.zeros((4, 8, 8, 2)))


def test_scatter_places_points_with_y_up(tmp_path):
  path = tmp_path / "scatter.png"
  samples = np.array([[0.0, 0.0], [0.5, 0.5], [np.nan, 0.0], [5.0, 5.0]])
  data = np.array([[0.5, -0.5]])
  writers.scatter_png(path, samples, data, size=101, bounds=(-1, 1, -1, 1), radius=0)
  png = Image.open(path)
  assert png.mode == "RGB" and png.size == (101, 101)
  pixels = np.asarray(png)
  # Column (x + 1) / 2 * 100, row (1 - y) / 2 * 100.
  assert tuple(pixels[50, 50]) == writers.SAMPLE_COLOUR  # (0, 0)
  assert tuple(pixels[25, 75]) == writers.SAMPLE_COLOUR  # (0.5, 0.5): up and right
  assert tuple(pixels[75, 75]) == writers.DATA_COLOUR  # (0.5, -0.5): down and right
  # Nothing else was drawn (NaN and out-of-window samples are left out) but the frame.
  inner = pixels[1:-1, 1:-1].reshape(-1, 3)
  assert np.sum(np.any(inner != writers.BACKGROUND, axis=1)) == 3
  assert tuple(pixels[0, 0]) == writers.FRAME


def test_scatter_default_bounds_cover_the_data(tmp_path):
  data = np.random.default_rng(0).normal(size=(2000, 2)) * [3.0, 1.0] + [10.0, -4.0]
  path = tmp_path / "auto.png"
  writers.scatter_png(path, data[:100], data, size=200)
  pixels = np.asarray(Image.open(path))
  drawn = np.argwhere(np.any(pixels[1:-1, 1:-1] != writers.BACKGROUND, axis=-1))
  # The 99% window is square and centred on the data: dots reach near both horizontal edges.
  assert drawn[:, 1].min() < 20 and drawn[:, 1].max() > 178


def test_save_npz_round_trip(tmp_path):
  path = tmp_path / "sub" / "samples.npz"
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  writers.save_npz(path, samples=x, labels=np.arange(4))
  with np.load(path) as f:
    np.testing.assert_array_equal(f["samples"], np.asarray(x))
    np.testing.assert_array_equal(f["labels"], np.arange(4))


def read_events(logdir) -> list:
  """Events of every tensorboard event file in logdir (TFRecord framing: u64 length, u32 crc,
  payload, u32 crc)."""
  from tensorboardX.proto import event_pb2

  events = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      raw = f.read()
    at = 0
    while at < len(raw):
      (length,) = struct.unpack("<Q", raw[at : at + 8])
      event = event_pb2.Event()
      event.ParseFromString(raw[at + 12 : at + 12 + length])
      events.append(event)
      at += 12 + length + 4
  return events


def test_metric_writer_writes_scalars_on_process_0(tmp_path):
  with writers.MetricWriter(tmp_path / "tb") as writer:
    writer.scalar("loss", jnp.float32(0.25), 10)
    writer.scalars({"loss": 0.125, "lr": np.float64(2e-4)}, 20)
  scalars = [
    (e.step, v.tag, v.simple_value) for e in read_events(tmp_path / "tb") for v in e.summary.value
  ]
  # Stored as float32 simple values.
  assert scalars == [
    (10, "loss", 0.25),
    (20, "loss", 0.125),
    (20, "lr", pytest.approx(2e-4, rel=1e-6)),
  ]


def test_metric_writer_is_silent_on_other_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with writers.MetricWriter(tmp_path / "tb") as writer:
    writer.scalar("loss", 1.0, 1)
    writer.flush()
  assert not writer.enabled and not (tmp_path / "tb").exists()
