"""What a run writes besides checkpoints: PNG sample grids, 2-D scatter plots, npz arrays, and
TensorBoard scalars.

Images are drawn with Pillow (no plotting library). Files are written to a temporary name and
renamed, so a reader (or a crash) never sees half a file. In a multi-host run, call the file
writers from process 0 only; `MetricWriter` checks that itself.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

# Colours of the scatter plot (RGB).
BACKGROUND = (255, 255, 255)
FRAME = (160, 160, 160)
DATA_COLOUR = (120, 150, 210)
SAMPLE_COLOUR = (215, 40, 40)


def _atomic_write(path: str | os.PathLike, write) -> None:
  """Calls write(tmp_path) for a temporary file beside `path`, then renames it to `path`."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def to_uint8(images: Any) -> np.ndarray:
  """Maps values in [0, 1] to 0..255 by rounding 255 x (values outside are clipped, NaN -> 0)."""
  x = np.nan_to_num(np.asarray(images, np.float64), nan=0.0, posinf=1.0, neginf=0.0)
  return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_grid(
  images: Any, nrow: int | None = None, *, padding: int = 2, pad_value: float = 0.5
) -> np.ndarray:
  """Tiles images [N, H, W, C] into one image, `nrow` per row (torchvision's convention).

  Args:
    images: [N, H, W, C] values in [0, 1], C = 1 (grey) or 3 (RGB).
    nrow: images per row (default ceil(sqrt(N))).
    padding: pixels of `pad_value` between and around the images.
    pad_value: the value of the separating pixels.

  Returns:
    [rows (H + padding) + padding, nrow (W + padding) + padding, C] float array.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
    raise ValueError(
      f"Images must be shaped [N, H, W, C] with N >= 1 and C in (1, 3); got {images.shape}."
    )
  n, h, w, c = images.shape
  nrow = int(nrow or math.ceil(math.sqrt(n)))
  nrow = max(1, min(nrow, n))
  rows = math.ceil(n / nrow)
  grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value)
  for i in range(n):
    top = padding + (i // nrow) * (h + padding)
    left = padding + (i % nrow) * (w + padding)
    grid[top : top + h, left : left + w] = images[i]
  return grid


def save_image_grid(
  path: str | os.PathLike,
  images: Any,
  nrow: int | None = None,
  *,
  padding: int = 2,
  pad_value: float = 0.5,
  scale: int = 1,
) -> None:
  """Writes images [N, H, W, C] in [0, 1] as one PNG grid (grey for C = 1, RGB for C = 3).

  Args:
    path: the PNG file to write.
    images: [N, H, W, C] values in [0, 1] (e.g. `inverse_scaler(samples)`).
    nrow: images per row (default ceil(sqrt(N))).
    padding: grey separating pixels between images.
    pad_value: value of the separating pixels.
    scale: integer nearest-neighbour magnification of the whole grid (e.g. 4 for 8x8 digits).
  """
  grid = to_uint8(make_grid(images, nrow, padding=padding, pad_value=pad_value))
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  image = (
    Image.fromarray(grid[..., 0], "L") if grid.shape[-1] == 1 else Image.fromarray(grid, "RGB")
  )
  _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _bounds(points: np.ndarray, margin: float = 0.05) -> tuple[float, float, float, float]:
  """(xmin, xmax, ymin, ymax): a square window around the 0.5%-99.5% quantiles of the points."""
  lo = np.quantile(points, 0.005, axis=0)
  hi = np.quantile(points, 0.995, axis=0)
  centre = (lo + hi) / 2
  half = max(float(np.max(hi - lo)) / 2, 1e-6) * (1 + 2 * margin)
  return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def scatter_png(
  path: str | os.PathLike,
  samples: Any,
  data: Any = None,
  *,
  size: int = 512,
  bounds: tuple[float, float, float, float] | None = None,
  radius: int = 1,
) -> None:
  """Writes a scatter plot of 2-D samples (red) over data points (blue) as a PNG.

  Args:
    path: the PNG file to write.
    samples: [N, 2] points; non-finite ones (a diverged sampler) are left out.
    data: [M, 2] reference points drawn underneath, or None.
    size: the image is size x size pixels.
    bounds: (xmin, xmax, ymin, ymax) of the window; default from the data (or the samples).
    radius: dot radius in pixels (0: single pixels).

  Point (x, y) lands at column (x - xmin) / (xmax - xmin) (size - 1), row
  (ymax - y) / (ymax - ymin) (size - 1), rounded: y points up.
  """
  samples = np.asarray(samples, np.float64).reshape(-1, 2)
  samples = samples[np.all(np.isfinite(samples), axis=1)]
  data = None if data is None else np.asarray(data, np.float64).reshape(-1, 2)
  if bounds is None:
    reference = data if data is not None and len(data) else samples
    bounds = _bounds(reference) if len(reference) else (-1.0, 1.0, -1.0, 1.0)
  xmin, xmax, ymin, ymax = (float(b) for b in bounds)
  if not (xmax > xmin and ymax > ymin):
    raise ValueError(f"bounds = {bounds} must have xmin < xmax and ymin < ymax.")
  image = Image.new("RGB", (size, size), BACKGROUND)
  draw = ImageDraw.Draw(image)

  def plot(points: np.ndarray, colour) -> None:
    cols = np.round((points[:, 0] - xmin) / (xmax - xmin) * (size - 1)).astype(np.int64)
    rows = np.round((ymax - points[:, 1]) / (ymax - ymin) * (size - 1)).astype(np.int64)
    inside = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    for col, row in zip(cols[inside], rows[inside], strict=True):
      if radius <= 0:
        draw.point((int(col), int(row)), fill=colour)
      else:
        draw.ellipse((col - radius, row - radius, col + radius, row + radius), fill=colour)

  if data is not None:
    plot(data, DATA_COLOUR)
  plot(samples, SAMPLE_COLOUR)
  draw.rectangle((0, 0, size - 1, size - 1), outline=FRAME)
  _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
  """Writes arrays (numpy or jax) to a compressed .npz file, e.g. save_npz(p, samples=x)."""
  host = {name: np.asarray(value) for name, value in arrays.items()}
  _atomic_write(path, lambda tmp: np.savez_compressed(tmp, **host))


class MetricWriter:
  """TensorBoard scalars through tensorboardX, written by process 0 only (a no-op elsewhere).

  Args:
    logdir: the TensorBoard log directory (created on process 0).
    enabled: override the process-0 rule (None: `jax.process_index() == 0`).
  """

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool | None = None):
    self.logdir = os.fspath(logdir)
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    self._writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(self.logdir)

  def scalar(self, name: str, value: Any, step: int) -> None:
    """Logs one scalar (a Python number or a 0-d array) at `step`."""
    if self._writer is not None:
      self._writer.add_scalar(name, float(np.asarray(value)), int(step))

  def scalars(self, values: Mapping[str, Any], step: int) -> None:
    """Logs several scalars at `step`, e.g. {"loss": l, "lr": lr}."""
    for name, value in values.items():
      self.scalar(name, value, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
