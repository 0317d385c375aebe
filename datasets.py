"""Input pipelines: TFDS datasets, TFRecord folders, image folders, scikit-learn digits, 2-D toys.

Every source yields the same thing (DESIGN.md, "Data"): an iterator of numpy batches

    {"image": [local_devices, per_device_batch, H, W, C] float32,   # or [..., D] for vector data
     "label": [local_devices, per_device_batch] int32}               # only when the source has labels

ready for `parallel.shard`. Images are in [0, 1], or in [-1, 1] when `config.data.centered` (the
scaling is applied here, so the training loop must not apply `get_data_scaler` again; samplers map
back with `get_data_inverse_scaler`). Vector (toy) data keep their own coordinates: `centered`
applies to images only.

The source is chosen by `config.data.dataset` through the `DATASETS` registry; a user's own source
is a `Source` subclass registered with `@datasets.register_dataset("NAME")` in a module the config
imports. Built-in names:

  CIFAR10, SVHN, CELEBA, LSUN   TFDS (cifar10, svhn_cropped, celeb_a, lsun/<config.data.category>),
                                read from config.data.data_dir; nothing is ever downloaded here.
  CELEBAHQ, FFHQ                TFRecord files (config.data.tfrecords_path) in the format the
                                paper used: features `shape` (C, H, W) int64 and `data` raw uint8.
  IMAGE_FOLDER                  PNG / JPEG files under config.data.data_dir.
  DIGITS                        scikit-learn's 1,797 8x8 grey digits (shipped with the package).
  gaussian_mixture, checkerboard, swiss_roll, two_moons   2-D toy distributions, sampled afresh.

Batch sizes (`config.training.batch_size` for training, `config.eval.batch_size` with
`evaluation=True`) are global: each host reads `global / jax.process_count()` examples of its own
shard, split over its `jax.local_device_count()` devices.

Randomness is seeded from `config.seed`, the split and `jax.process_index()`, so a run is
reproducible and every host reads a different stream. TensorFlow is imported only by the TFDS,
TFRecord and image-folder sources.

Resuming. `get_dataset(..., start=k)` yields batch k, k + 1, ... of the stream that `start=0`
yields, bit for bit, without producing the batches before k (training resumes at step k this way).
Every random choice is a function of a position in the stream, never of how much was read before:
a training stream is a sequence of epochs, each a permutation (or, for TFDS and TFRecord files,
a seeded shuffle-buffer pass) drawn from (seed, epoch); random flips and dequantisation noise are
drawn from (seed, batch index); toy batches from (seed, batch index). A resumed stream therefore
starts at epoch kB // N and skips kB mod N elements of it before anything is decoded (file names
for image folders; undecoded records for TFDS and TFRecords, where the skip reads at most one
epoch of raw records and decodes none), where B is the host batch and N the examples per epoch.
"""

from __future__ import annotations

import abc
import functools
import glob
import inspect
import itertools
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import jax
import numpy as np

from utils import Registry

Batch = dict[str, np.ndarray]

SPLITS = ("train", "test")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
# Spawn keys separating the independent random streams drawn for one split on one host.
_SOURCE_STREAM, _AUGMENT_STREAM = 0, 1
# A TensorFlow source's training stream is read as one tf.data pipeline per block of whole epochs
# holding at least _MIN_BLOCK_EXAMPLES examples (and at most the source's `max_block_epochs`
# epochs). Starting a pipeline (tracing the decoder, filling the prefetch and shuffle buffers) takes
# about 0.3-1 s on 2 CPU cores, so it happens once per 50,000 examples or per epoch, whichever is
# longer.
_MIN_BLOCK_EXAMPLES = 50_000


class Source(abc.ABC):
  """A data source selected by `config.data.dataset`.

  The constructor reads and checks its config fields (raising `ValueError` that names the field),
  so a wrong config fails before anything compiles. `host_batches` yields this host's share of the
  data as batches of examples before augmentation; `get_dataset` adds the rest (random flip,
  uniform dequantisation, centring, the device axis).

  Class attributes:
    is_image: True for image data in [0, 1] (flip, dequantisation and centring apply); False for
      vector data, which are passed through in their own coordinates.
    levels: number of quantisation levels of the stored pixel values (256 for 8-bit images),
      for uniform dequantisation.
  """

  is_image: ClassVar[bool] = True
  levels: ClassVar[int] = 256

  def __init__(self, config: Any):
    self.config = config

  @property
  @abc.abstractmethod
  def shape(self) -> tuple[int, ...]:
    """Shape of one example: (H, W, C) for images, (D,) for vectors."""

  @property
  def has_labels(self) -> bool:
    """Whether batches carry a "label" entry."""
    return False

  @abc.abstractmethod
  def host_batches(
    self, *, split: str, evaluation: bool, batch_size: int, seed: int, start: int = 0
  ) -> Iterator[Batch]:
    """Yields batches of this host's examples.

    Args:
      split: "train" or "test" (each source maps "test" to its held-out split).
      evaluation: if True, one pass over the split in a fixed order, else an endless shuffled stream.
      batch_size: examples per batch on this host; an incomplete last batch is dropped.
      seed: seed of this host's random stream for this split.
      start: index of the first batch to yield: the stream must equal that of `start=0` without
        its first `start` batches, and should skip them without decoding them. A user's source
        may leave this argument out; `get_dataset` then drops the batches itself.

    Yields:
      {"image": [batch_size, *shape] float32 (images in [0, 1]), "label": [batch_size] int32}.
    """


DATASETS: Registry[type[Source]] = Registry("dataset", "config.data.dataset")
register_dataset = DATASETS.register


# --- Public entry points. -----------------------------------------------------------------------


def get_data_scaler(config: Any) -> Callable[[Any], Any]:
  """The map from data in [0, 1] to model space: x -> 2x - 1 if `config.data.centered` (images)."""
  if DATASETS.get(config.data.dataset).is_image and config.data.get("centered", False):
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config: Any) -> Callable[[Any], Any]:
  """The inverse of `get_data_scaler`: model space -> [0, 1] for images (e.g. for samples)."""
  if DATASETS.get(config.data.dataset).is_image and config.data.get("centered", False):
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


def batch_sizes(config: Any, evaluation: bool = False) -> tuple[int, int]:
  """The per-host and per-device batch sizes of the global batch size in the config.

  Returns:
    (per_host, per_device): global / jax.process_count() and per_host / jax.local_device_count().

  Raises:
    ValueError: naming the config field when the global batch does not split evenly over devices.
  """
  field = "config.eval.batch_size" if evaluation else "config.training.batch_size"
  size = int(config.eval.batch_size if evaluation else config.training.batch_size)
  hosts, local = jax.process_count(), jax.local_device_count()
  if size <= 0 or size % (hosts * local):
    raise ValueError(
      f"{field} = {size} must be a positive multiple of the number of devices "
      f"({hosts * local} = {hosts} host(s) x {local} local device(s)); it is the global batch size."
    )
  return size // hosts, size // (hosts * local)


def get_source(config: Any) -> Source:
  """Builds and checks the source named by `config.data.dataset` (no data are read yet)."""
  source = DATASETS.get(config.data.dataset)(config)
  _check_shape(config, source)
  return source


def get_dataset(
  config: Any,
  *,
  split: str = "train",
  evaluation: bool = False,
  uniform_dequantization: bool | None = None,
  start: int = 0,
) -> Iterator[Batch]:
  """An iterator of host-local batches of `config.data.dataset` (see the module docstring).

  Every config check (dataset name, data location, image size, batch size) runs before this
  returns, so a wrong config fails before anything compiles.

  Args:
    config: the experiment config (reads `config.data`, `config.seed` and the batch size).
    split: "train" or "test" ("test" is the held-out split: CIFAR-10 test, CelebA validation, ...).
    evaluation: if True, batches of `config.eval.batch_size`, one pass, no random flip, and an
      incomplete last batch dropped; else an endless shuffled stream of `config.training.batch_size`.
    uniform_dequantization: add U[0, 1) noise to the integer pixel values and divide by the number
      of levels, (x (L - 1) + u) / L, as for the bits/dim of discrete data the paper reports;
      default `config.data.uniform_dequantization`. Ignored for vector data.
    start: index of the first batch: the iterator yields batches start, start + 1, ... of the
      stream that `start=0` yields, bit for bit (augmentation included), skipping the earlier
      ones before they are decoded (see the module docstring). Training resumed at step k uses
      start = k.

  Returns:
    An iterator of {"image": [local_devices, per_device_batch, *shape] float32,
    "label": [local_devices, per_device_batch] int32 (when the source has labels)}.
  """
  if split not in SPLITS:
    raise ValueError(f"split = {split!r}; valid choices: {', '.join(SPLITS)}.")
  start = int(start)
  if start < 0:
    raise ValueError(f"start = {start} must be a batch index >= 0.")
  source = get_source(config)
  per_host, per_device = batch_sizes(config, evaluation)
  if uniform_dequantization is None:
    uniform_dequantization = bool(config.data.get("uniform_dequantization", False))
  flip = bool(config.data.get("random_flip", False)) and not evaluation
  seeds = np.random.SeedSequence([int(config.seed), _SPLIT_IDS[split], jax.process_index()]).spawn(
    2
  )
  source_seed = int(seeds[_SOURCE_STREAM].generate_state(1)[0])
  augment_seed = int(seeds[_AUGMENT_STREAM].generate_state(1)[0])
  scaler = get_data_scaler(config)
  batches = _host_batches(
    source, start, split=split, evaluation=evaluation, batch_size=per_host, seed=source_seed
  )
  device_dims = (jax.local_device_count(), per_device)

  def generate() -> Iterator[Batch]:
    for index, batch in enumerate(batches, start):
      x = np.asarray(batch["image"], np.float32)
      if source.is_image and (flip or uniform_dequantization):
        augment_rng = np.random.default_rng([augment_seed, index])  # a function of the position
        if flip:
          x = _random_flip(augment_rng, x)
        if uniform_dequantization:
          x = _dequantize(augment_rng, x, source.levels)
      if source.is_image:
        x = np.asarray(scaler(x), np.float32)
      out = {"image": x.reshape(device_dims + x.shape[1:])}
      if "label" in batch:
        out["label"] = np.asarray(batch["label"], np.int32).reshape(device_dims)
      yield out

  return generate()


# --- Shared helpers. ----------------------------------------------------------------------------


def _host_batches(source: Source, start: int, **kwargs: Any) -> Iterator[Batch]:
  """`source.host_batches(start=start, ...)`; for a source without `start`, its stream with the
  first `start` batches read and dropped."""
  if "start" in inspect.signature(source.host_batches).parameters:
    return source.host_batches(start=start, **kwargs)
  if start:
    logging.warning(
      "%s.host_batches takes no `start` argument: skipping %d batches by reading them.",
      type(source).__name__,
      start,
    )
  return itertools.islice(source.host_batches(**kwargs), start, None)


def _epoch_seed(seed: int, epoch: int) -> int:
  """The seed of one epoch of a stream: a function of (seed, epoch) only."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n examples in `epoch` of the stream seeded by `seed`."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def _rebatch(chunks: Iterator[Batch], batch_size: int) -> Iterator[Batch]:
  """Regroups chunks (dicts of arrays of any common leading size) into batches of exactly
  `batch_size` examples, in order; an incomplete last batch is dropped."""
  pending: list[Batch] = []
  count = 0
  for chunk in chunks:
    size = len(next(iter(chunk.values())))
    if not pending and size == batch_size:
      yield chunk
      continue
    pending.append(chunk)
    count += size
    if count < batch_size:
      continue
    merged = {k: np.concatenate([c[k] for c in pending]) for k in chunk}
    full = count // batch_size
    for i in range(full):
      yield {k: v[i * batch_size : (i + 1) * batch_size] for k, v in merged.items()}
    count -= full * batch_size
    pending = [{k: v[full * batch_size :] for k, v in merged.items()}] if count else []


def _check_shape(config: Any, source: Source) -> None:
  """Checks the config's data shape against what the source produces; the error names the field."""
  shape = source.shape
  name = config.data.dataset
  if not source.is_image:
    dim = config.data.get("dim", None)
    if dim is not None and (int(dim),) != tuple(shape):
      raise ValueError(
        f"config.data.dim = {dim}, but dataset {name!r} has examples of shape {shape}."
      )
    return
  height, width, channels = shape
  size = config.data.get("image_size", None)
  if size is None or (int(size), int(size)) != (height, width):
    raise ValueError(
      f"config.data.image_size = {size}, but dataset {name!r} produces {height}x{width} images."
    )
  num_channels = config.data.get("num_channels", None)
  if num_channels is not None and int(num_channels) != channels:
    raise ValueError(
      f"config.data.num_channels = {num_channels}, but dataset {name!r} has {channels} channel(s)."
    )


def _random_flip(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
  """Mirrors each image of x [B, H, W, C] left-right with probability 1/2."""
  flip = rng.random(x.shape[0]) < 0.5
  x = x.copy()
  x[flip] = x[flip, :, ::-1]
  return x


def _dequantize(rng: np.random.Generator, x: np.ndarray, levels: int) -> np.ndarray:
  """Uniform dequantisation (x (L - 1) + u) / L, u ~ U[0, 1), of x in [0, 1] with L levels."""
  u = rng.random(x.shape, dtype=np.float32)
  return ((x * (levels - 1) + u) / levels).astype(np.float32)


def _require(config: Any, field: str, why: str) -> Any:
  """Returns config.data.<field>, or raises a ValueError naming it."""
  value = config.data.get(field, None)
  if value in (None, ""):
    raise ValueError(f"config.data.{field} is not set; {why}")
  return value


def _shuffled_batches(
  arrays: dict[str, np.ndarray], *, evaluation: bool, batch_size: int, seed: int, start: int = 0
) -> Iterator[Batch]:
  """Batches start, start + 1, ... of in-memory arrays: one ordered pass, or endless epochs, each
  a permutation drawn from (seed, epoch) (a batch may span two epochs).

  Checks that one batch fits before returning (not at the first `next`).
  """
  n = len(next(iter(arrays.values())))
  if n < batch_size:
    raise ValueError(
      f"This host holds {n} examples, fewer than its batch of {batch_size}: lower the batch size."
    )

  def ordered() -> Iterator[Batch]:
    for first in range(start * batch_size, n - batch_size + 1, batch_size):
      yield {k: v[first : first + batch_size] for k, v in arrays.items()}

  def shuffled() -> Iterator[Batch]:
    epoch, offset = divmod(start * batch_size, n)
    order = np.empty(0, np.int64)
    while True:
      while len(order) < batch_size:
        order = np.concatenate([order, _permutation(seed, epoch, n)[offset:]])
        epoch, offset = epoch + 1, 0
      index, order = order[:batch_size], order[batch_size:]
      yield {k: v[index] for k, v in arrays.items()}

  return ordered() if evaluation else shuffled()


# --- scikit-learn digits: the embedded default. -------------------------------------------------

# The first 1,500 digits train, the last 297 test (both about 10% per class).
DIGITS_NUM_TRAIN = 1500
DIGITS_LEVELS = 17  # the pixel values are the integers 0..16


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1] in [0, 1]
  return images, digits.target.astype(np.int32)


@register_dataset("DIGITS")
class Digits(Source):
  """scikit-learn's handwritten digits: 1,797 grey 8x8 images with values 0..16, and labels 0..9.

  Values are divided by 16 (ink 1, paper 0). The split is fixed: the first 1,500 images train, the
  remaining 297 test. Images are 8x8; `config.data.image_size` may be a multiple of 8, in which case
  each pixel is repeated into a k x k block (nearest-neighbour upsampling, which keeps the 17 levels).
  Hosts read disjoint interleaved shards (example i goes to host i mod process_count).
  """

  levels = DIGITS_LEVELS

  def __init__(self, config: Any):
    super().__init__(config)
    size = int(config.data.get("image_size", 8))
    if size <= 0 or size % 8:
      raise ValueError(
        f"config.data.image_size = {size}: the digits are 8x8; use 8 or a multiple of 8 "
        "(pixels are then repeated into blocks)."
      )
    self.factor = size // 8

  @property
  def shape(self) -> tuple[int, ...]:
    return (8 * self.factor, 8 * self.factor, 1)

  @property
  def has_labels(self) -> bool:
    return True

  def host_batches(self, *, split, evaluation, batch_size, seed, start=0):
    images, labels = _load_digits()
    part = slice(None, DIGITS_NUM_TRAIN) if split == "train" else slice(DIGITS_NUM_TRAIN, None)
    host = slice(jax.process_index(), None, jax.process_count())
    images, labels = images[part][host], labels[part][host]
    if self.factor > 1:
      images = images.repeat(self.factor, axis=1).repeat(self.factor, axis=2)
    return _shuffled_batches(
      {"image": images, "label": labels},
      evaluation=evaluation,
      batch_size=batch_size,
      seed=seed,
      start=start,
    )


# --- 2-D toy distributions. ---------------------------------------------------------------------


class ToySource(Source):
  """A 2-D distribution sampled afresh from a seeded numpy generator (vector data, shape (2,)).

  Training streams are endless. With `evaluation=True` a host yields its share of
  `config.data.num_examples` examples (default 10,000) and stops. Batch k is drawn from a
  generator seeded by (seed, k). Subclasses implement `sample`.
  """

  is_image = False

  @property
  def shape(self) -> tuple[int, ...]:
    return (2,)

  @abc.abstractmethod
  def sample(self, rng: np.random.Generator, n: int) -> Batch:
    """Draws n examples: {"image": [n, 2] float32, and "label": [n] int32 for labelled toys}."""

  def host_batches(self, *, split, evaluation, batch_size, seed, start=0):
    num_batches = None  # endless
    if evaluation:
      total = int(self.config.data.get("num_examples", 10_000)) // jax.process_count()
      num_batches = total // batch_size
      if num_batches == 0:
        raise ValueError(
          f"config.data.num_examples = {self.config.data.get('num_examples', 10_000)} gives this "
          f"host fewer examples than one batch of {batch_size}."
        )

    def draws() -> Iterator[Batch]:
      indices = itertools.count(start) if num_batches is None else range(start, num_batches)
      for index in indices:
        batch = self.sample(np.random.default_rng([seed, index]), batch_size)
        batch["image"] = batch["image"].astype(np.float32)
        yield batch

    return draws()

  def _param(self, field: str, default: float) -> float:
    return float(self.config.data.get(field, default))


def gaussian_mixture_params(config: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Weights [K], means [K, 2] and covariances [K, 2, 2] of the `gaussian_mixture` toy.

  K = config.data.num_components (default 8) isotropic Gaussians with std
  config.data.component_std (default 0.2), centred at radius config.data.radius (default 2) at
  angles 2 pi k / K, with weights config.data.weights (default uniform; normalised to sum to 1).
  Exact densities and scores of this data under any SDE follow from `closed_form`.
  """
  data = config.data
  k = int(data.get("num_components", 8))
  radius = float(data.get("radius", 2.0))
  std = float(data.get("component_std", 0.2))
  weights = data.get("weights", None)
  weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, np.float64)
  if weights.shape != (k,) or np.any(weights < 0) or weights.sum() <= 0:
    raise ValueError(
      f"config.data.weights = {data.get('weights')} must be {k} non-negative numbers "
      "(config.data.num_components) with a positive sum."
    )
  angles = 2 * np.pi * np.arange(k) / k
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  covs = np.broadcast_to(std**2 * np.eye(2), (k, 2, 2)).copy()
  return weights / weights.sum(), means, covs


@register_dataset("gaussian_mixture")
class GaussianMixture(ToySource):
  """Gaussians on a circle (`gaussian_mixture_params`); labels are the component indices."""

  def __init__(self, config: Any):
    super().__init__(config)
    self.weights, self.means, self.covs = gaussian_mixture_params(config)

  @property
  def has_labels(self) -> bool:
    return True

  def sample(self, rng, n):
    label = rng.choice(len(self.weights), size=n, p=self.weights)
    z = rng.standard_normal((n, 2))
    x = self.means[label] + np.einsum("nij,nj->ni", np.linalg.cholesky(self.covs)[label], z)
    return {"image": x, "label": label.astype(np.int32)}


@register_dataset("checkerboard")
class Checkerboard(ToySource):
  """Uniform on the 8 "black" cells of a 4x4 board of unit cells covering [-2, 2]^2.

  A cell with lower-left corner (i, j), i, j in {-2, ..., 1}, is black when i + j is even; the
  density is 1/8 there and 0 elsewhere (per-coordinate mean 0, variance 4/3).
  """

  def sample(self, rng, n):
    cell = rng.integers(0, 8, size=n)
    row = cell // 2  # 0..3
    col = 2 * (cell % 2) + row % 2  # keeps (row + col) even
    x = np.stack([col, row], axis=-1) - 2.0 + rng.random((n, 2))
    return {"image": x}


@register_dataset("swiss_roll")
class SwissRoll(ToySource):
  """A 2-D Swiss roll: s (cos s, sin s) / 5 with s = 1.5 pi (1 + 2u), u ~ U(0, 1), plus Gaussian
  noise of std config.data.noise (default 0.1); the radius s / 5 lies in [0.94, 2.83]."""

  def sample(self, rng, n):
    s = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([s * np.cos(s), s * np.sin(s)], axis=-1) / 5.0
    return {"image": x + self._param("noise", 0.1) * rng.standard_normal((n, 2))}


@register_dataset("two_moons")
class TwoMoons(ToySource):
  """Two interleaved half circles, labels 0 (upper) and 1 (lower), equally likely.

  Before scaling, moon 0 is (cos a, sin a) and moon 1 is (1 - cos a, 1/2 - sin a), a ~ U(0, pi);
  points are then centred, 2 (p - (1/2, 1/4)), and get Gaussian noise of std config.data.noise
  (default 0.1).
  """

  @property
  def has_labels(self) -> bool:
    return True

  def sample(self, rng, n):
    label = rng.integers(0, 2, size=n)
    a = np.pi * rng.random(n)
    upper = np.stack([np.cos(a), np.sin(a)], axis=-1)
    lower = np.stack([1.0 - np.cos(a), 0.5 - np.sin(a)], axis=-1)
    p = np.where(label[:, None] == 0, upper, lower)
    x = 2.0 * (p - np.array([0.5, 0.25])) + self._param("noise", 0.1) * rng.standard_normal((n, 2))
    return {"image": x, "label": label.astype(np.int32)}


# --- TensorFlow-based sources (imported lazily). -----------------------------------------------


@functools.cache
def _tf():
  """Imports TensorFlow and TFDS on first use, hiding GPUs from TensorFlow (JAX owns them)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices elsewhere in this process.
    logging.warning("TensorFlow was initialised before datasets.py could hide the GPUs from it.")
  return tf, tfds


def _tf_stream(
  raw_epochs: Callable[[range], Any],
  decode: Callable[..., Any],
  *,
  examples: int,
  evaluation: bool,
  batch_size: int,
  start: int,
  max_block_epochs: int = 64,
) -> Iterator[Batch]:
  """Batches start, start + 1, ... of a TensorFlow source, skipped before decoding.

  The training stream is the concatenation of epochs 0, 1, 2, ...; batch k holds its elements
  [k B, (k + 1) B). Resuming at batch k starts at epoch kB // examples and skips kB mod examples
  undecoded elements of it.

  Args:
    raw_epochs: `raw_epochs(epochs)` is a tf.data.Dataset of this host's undecoded elements (file
      names, serialised records) of the consecutive `epochs` (a range), each epoch in an order
      that is a function of its number alone; with evaluation, epoch 0 is the split in a fixed
      order.
    decode: maps one undecoded element to {"image": float [H, W, C] in [0, 1], "label"?}.
    examples: elements per epoch on this host.
    evaluation: one pass over epoch 0 (incomplete last batch dropped) instead of an endless stream.
    batch_size: examples per host batch (B).
    start: index of the first batch.
    max_block_epochs: at most this many epochs in one pipeline (each costs `raw_epochs` time).
  """
  tf, tfds = _tf()
  if examples <= 0:
    raise ValueError("This host's share of the dataset holds no examples.")
  first = start * batch_size

  def pipeline(epochs: range, skip: int, drop_remainder: bool) -> Iterator[Batch]:
    ds = raw_epochs(epochs).skip(skip).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))

  if evaluation:
    return pipeline(range(1), first, drop_remainder=True)
  per_block = min(max_block_epochs, max(1, -(-_MIN_BLOCK_EXAMPLES // examples)))

  def blocks() -> Iterator[Batch]:
    epoch, offset = divmod(first, examples)
    while True:
      yield from pipeline(range(epoch, epoch + per_block), offset, drop_remainder=False)
      epoch, offset = epoch + per_block, 0

  return _rebatch(blocks(), batch_size)


def _concatenate(datasets: list[Any]) -> Any:
  """The tf.data datasets one after the other."""
  return functools.reduce(lambda a, b: a.concatenate(b), datasets)


def _resize_shorter(image: Any, size: int, method: str = "bilinear") -> Any:
  """Resizes float image [H, W, C] so its shorter side is `size` (antialiased)."""
  tf, _ = _tf()
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  ratio = size / tf.reduce_min(shape)
  new_hw = tf.cast(tf.round(shape * ratio), tf.int32)
  return tf.image.resize(image, new_hw, method=method, antialias=True)


def _central_crop(image: Any, size: int) -> Any:
  """The central size x size window of image [H, W, C]."""
  tf, _ = _tf()
  top = (tf.shape(image)[0] - size) // 2
  left = (tf.shape(image)[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _square_crop_resize(image: Any, size: int) -> Any:
  """Centre-crops float image [H, W, C] to a square and resizes it (bicubic, antialiased) to
  size x size, rounded back to the 8-bit grid and clipped to [0, 1]."""
  tf, _ = _tf()
  side = tf.reduce_min(tf.shape(image)[:2])
  image = _central_crop(image, side)
  image = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
  return tf.clip_by_value(tf.round(image * 255.0), 0.0, 255.0) / 255.0


class TFDSSource(Source):
  """A TFDS dataset read from `config.data.data_dir` (default: TFDS's own data directory).

  Subclasses set `tfds_name` and `test_split`, and `preprocess` maps a decoded uint8 image to float
  [image_size, image_size, C] in [0, 1]. Each host reads `tfds.even_splits` part
  `jax.process_index()` of the split. A training epoch reads the split's files in an order drawn
  from (seed, epoch) and mixes their records, still encoded, in a shuffle buffer of
  config.data.shuffle_buffer_size (default 10,000) seeded likewise; images are decoded after
  that, so skipping to a resumed position decodes nothing.
  """

  tfds_name: ClassVar[str] = ""
  test_split: ClassVar[str] = "test"

  def __init__(self, config: Any):
    super().__init__(config)
    _, tfds = _tf()
    self.name = self._name(config)
    self.data_dir = config.data.get("data_dir", None) or None
    self.builder = tfds.builder(self.name, data_dir=self.data_dir)
    if not self.builder.is_prepared():
      where = self.data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise FileNotFoundError(
        f"TFDS dataset {self.name!r} (config.data.dataset = {config.data.dataset!r}) is not "
        f"prepared in {where} (config.data.data_dir). Nothing is downloaded at run time: prepare "
        f"it once where the data can be fetched, with `tfds build {self.name} --data_dir {where}` "
        "(datasets with manual downloads say where to put the files), then copy that directory "
        "here, or point --config.data.data_dir at a directory that holds it."
      )
    features = self.builder.info.features
    self._has_labels = "label" in features
    self.size = int(_require(config, "image_size", "set the image resolution to train at."))
    self.channels = int(features["image"].shape[-1])

  def _name(self, config: Any) -> str:
    return self.tfds_name

  @property
  def shape(self):
    return (self.size, self.size, self.channels)

  @property
  def has_labels(self):
    return self._has_labels

  def preprocess(self, image: Any) -> Any:
    """Default: float in [0, 1], antialiased bilinear resize to image_size (CIFAR-10, SVHN)."""
    tf, _ = _tf()
    image = tf.image.convert_image_dtype(image, tf.float32)
    if tuple(image.shape[:2]) == (self.size, self.size):
      return image
    return tf.image.resize(image, (self.size, self.size), antialias=True)

  def host_batches(self, *, split, evaluation, batch_size, seed, start=0):
    tf, tfds = _tf()
    name = "train" if split == "train" else self.test_split
    if jax.process_count() > 1:
      name = tfds.even_splits(name, n=jax.process_count())[jax.process_index()]
    # Ordered datasets (disable_shuffling) refuse file shuffling; the shuffle buffer still mixes.
    shuffle_files = not evaluation and not self.builder.info.disable_shuffling
    buffer = 0 if evaluation else int(self.config.data.get("shuffle_buffer_size", 10_000))
    image_feature = self.builder.info.features["image"]

    def one_epoch(epoch: int) -> Any:
      epoch_seed = _epoch_seed(seed, epoch)
      ds = self.builder.as_dataset(
        split=name,
        shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(shuffle_seed=epoch_seed),
        decoders={"image": tfds.decode.SkipDecoding()},  # decoded after skipping and shuffling
      )
      return ds.shuffle(buffer, seed=epoch_seed) if buffer > 0 else ds

    def decode(example):
      out = {"image": self.preprocess(image_feature.decode_example(example["image"]))}
      if self._has_labels:
        out["label"] = tf.cast(example["label"], tf.int32)
      return out

    return _tf_stream(
      lambda epochs: _concatenate([one_epoch(e) for e in epochs]),
      decode,
      examples=int(self.builder.info.splits[name].num_examples),
      evaluation=evaluation,
      batch_size=batch_size,
      start=start,
      max_block_epochs=8,  # each epoch opens the split anew (about 0.05 s)
    )


@register_dataset("CIFAR10")
class CIFAR10(TFDSSource):
  """CIFAR-10 (TFDS cifar10): 50,000 train / 10,000 test 32x32 colour images with labels."""

  tfds_name = "cifar10"


@register_dataset("SVHN")
class SVHN(TFDSSource):
  """SVHN (TFDS svhn_cropped): 32x32 colour digits with labels."""

  tfds_name = "svhn_cropped"


@register_dataset("CELEBA")
class CelebA(TFDSSource):
  """CelebA (TFDS celeb_a): central 140x140 crop, then the shorter side resized to image_size."""

  tfds_name = "celeb_a"
  test_split = "validation"

  def preprocess(self, image):
    tf, _ = _tf()
    image = _central_crop(tf.image.convert_image_dtype(image, tf.float32), 140)
    return _resize_shorter(image, self.size)


@register_dataset("LSUN")
class LSUN(TFDSSource):
  """LSUN (TFDS lsun/<config.data.category>, e.g. bedroom, church_outdoor).

  As in the paper: at 128x128, the shorter side is resized then centre-cropped; at other sizes a
  centre square crop is resized bicubically.
  """

  test_split = "validation"

  def _name(self, config):
    category = _require(config, "category", "LSUN needs a category, e.g. 'church_outdoor'.")
    return f"lsun/{category}"

  def preprocess(self, image):
    tf, _ = _tf()
    image = tf.image.convert_image_dtype(image, tf.float32)
    if self.size == 128:
      return _central_crop(_resize_shorter(image, self.size), self.size)
    return _square_crop_resize(image, self.size)


class TFRecordSource(Source):
  """Images stored as TFRecords of {"shape": int64 [3] = (C, H, W), "data": raw uint8 bytes}.

  This is the format the paper used for CelebA-HQ and FFHQ (one file per resolution, e.g.
  `ffhq-r10.tfrecords` for 1024x1024). `config.data.tfrecords_path` is a file or a glob pattern;
  both splits read the same files (as in the paper). Hosts read interleaved shards of the records.
  A training epoch mixes the records, still serialised, in a shuffle buffer of
  config.data.shuffle_buffer_size (default 10,000) seeded by (seed, epoch) and decodes them
  after that, so skipping to a resumed position decodes nothing. The number of records is
  counted once from the record headers (no record is read).
  """

  def __init__(self, config: Any):
    super().__init__(config)
    tf, _ = _tf()
    pattern = str(
      _require(config, "tfrecords_path", "point it at the TFRecord file(s) of this dataset.")
    )
    self.files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not self.files:
      raise FileNotFoundError(f"config.data.tfrecords_path = {pattern!r} matches no file.")
    first = next(iter(tf.data.TFRecordDataset(self.files[:1]).take(1)), None)
    if first is None:
      raise ValueError(f"{self.files[0]} (config.data.tfrecords_path) holds no record.")
    channels, height, width = (int(v) for v in self._parse(first)["shape"].numpy())
    self._shape = (height, width, channels)

  @staticmethod
  def _parse(record: Any) -> dict[str, Any]:
    tf, _ = _tf()
    return tf.io.parse_single_example(
      record,
      {"shape": tf.io.FixedLenFeature([3], tf.int64), "data": tf.io.FixedLenFeature([], tf.string)},
    )

  @property
  def shape(self):
    return self._shape

  @functools.cached_property
  def num_records(self) -> int:
    """Records in all the files together."""
    return sum(_count_records(path) for path in self.files)

  def host_batches(self, *, split, evaluation, batch_size, seed, start=0):
    tf, _ = _tf()
    hosts, host = jax.process_count(), jax.process_index()
    buffer = 0 if evaluation else int(self.config.data.get("shuffle_buffer_size", 10_000))

    def one_epoch(epoch: int) -> Any:
      ds = tf.data.TFRecordDataset(self.files).shard(hosts, host)
      return ds.shuffle(buffer, seed=_epoch_seed(seed, epoch)) if buffer > 0 else ds

    def decode(record):
      example = self._parse(record)
      image = tf.reshape(tf.io.decode_raw(example["data"], tf.uint8), example["shape"])
      image = tf.transpose(image, (1, 2, 0))  # (C, H, W) -> (H, W, C)
      return {
        "image": tf.ensure_shape(tf.image.convert_image_dtype(image, tf.float32), self._shape)
      }

    return _tf_stream(
      lambda epochs: _concatenate([one_epoch(e) for e in epochs]),
      decode,
      examples=len(range(host, self.num_records, hosts)),
      evaluation=evaluation,
      batch_size=batch_size,
      start=start,
    )


def _count_records(path: str) -> int:
  """The number of records of a TFRecord file, from their length headers (data are skipped).

  Each record is: length (uint64, little-endian), its masked CRC-32 (4 bytes), the data, and
  the data's masked CRC-32 (4 bytes).
  """
  tf, _ = _tf()
  size = tf.io.gfile.stat(path).length
  count = position = 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while position < size:
      f.seek(position)
      header = f.read(8)
      if len(header) < 8:
        break
      (length,) = struct.unpack("<Q", header)
      position += 8 + 4 + length + 4
      count += 1
  if position != size:
    raise ValueError(f"{path} (config.data.tfrecords_path) ends in a truncated record.")
  return count


@register_dataset("CELEBAHQ")
class CelebAHQ(TFRecordSource):
  """CelebA-HQ as TFRecords (config.data.tfrecords_path)."""


@register_dataset("FFHQ")
class FFHQ(TFRecordSource):
  """FFHQ as TFRecords (config.data.tfrecords_path)."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@register_dataset("IMAGE_FOLDER")
class ImageFolder(Source):
  """PNG / JPEG files under `config.data.data_dir`, for a user's own data.

  If `data_dir/train` and `data_dir/test` exist they are the splits; otherwise every file serves
  both splits (with a warning when the test split is read). If every file sits in a first-level
  sub-folder of the split directory, the sub-folders are the classes and batches carry labels
  (sorted folder names -> 0, 1, ...). Images are decoded to config.data.num_channels (default 3)
  channels, centre-cropped to a square and resized (bicubic, antialiased) to config.data.image_size
  unless they already have that size. Hosts read interleaved shards of the file list. A training
  epoch is a permutation of the host's files drawn from (seed, epoch); files are decoded only
  when their batch is read.
  """

  def __init__(self, config: Any):
    super().__init__(config)
    root = str(_require(config, "data_dir", "IMAGE_FOLDER reads its images from there."))
    self.root = os.path.expanduser(root)
    if not os.path.isdir(self.root):
      raise FileNotFoundError(f"config.data.data_dir = {root!r} is not a directory.")
    self.size = int(_require(config, "image_size", "set the image resolution to train at."))
    self.channels = int(config.data.get("num_channels", 3))
    if self.channels not in (1, 3):
      raise ValueError(f"config.data.num_channels = {self.channels}; image folders take 1 or 3.")
    self.files = {split: self._list(split) for split in SPLITS}
    self.classes = self._classes(self.files["train"])

  def _split_dir(self, split: str) -> str:
    path = os.path.join(self.root, split)
    has_both = all(os.path.isdir(os.path.join(self.root, s)) for s in SPLITS)
    return path if has_both else self.root

  def _list(self, split: str) -> list[str]:
    base = self._split_dir(split)
    files = sorted(
      os.path.relpath(os.path.join(d, f), base)
      for d, _, names in os.walk(base)
      for f in names
      if f.lower().endswith(IMAGE_SUFFIXES)
    )
    if not files:
      raise FileNotFoundError(
        f"No {'/'.join(IMAGE_SUFFIXES)} file under {base} (config.data.data_dir)."
      )
    return files

  @staticmethod
  def _classes(files: list[str]) -> list[str] | None:
    parts = [f.split(os.sep) for f in files]
    if all(len(p) == 2 for p in parts):
      return sorted({p[0] for p in parts})
    return None

  @property
  def shape(self):
    return (self.size, self.size, self.channels)

  @property
  def has_labels(self):
    return self.classes is not None

  def host_batches(self, *, split, evaluation, batch_size, seed, start=0):
    tf, _ = _tf()
    base = self._split_dir(split)
    if split == "test" and base == self.root:
      logging.warning(
        "%s has no train/ and test/ sub-folders: the test split reads the training images.",
        self.root,
      )
    files = self.files[split][jax.process_index() :: jax.process_count()]
    if self.classes is not None:
      index = {name: i for i, name in enumerate(self.classes)}
      unknown = sorted({f.split(os.sep)[0] for f in files} - set(index))
      if unknown:
        raise ValueError(f"Classes {unknown} of the {split} split are not in the training split.")
      labels = [index[f.split(os.sep)[0]] for f in files]
    else:
      labels = [0] * len(files)
    paths = np.asarray([os.path.join(base, f) for f in files])
    labels = np.asarray(labels, np.int32)

    def raw_epochs(epochs: range) -> Any:
      if evaluation:
        return tf.data.Dataset.from_tensor_slices((paths, labels))
      # The (cheap) file list in a new order every epoch; images are decoded after skipping.
      order = np.concatenate([_permutation(seed, e, len(paths)) for e in epochs])
      return tf.data.Dataset.from_tensor_slices((paths[order], labels[order]))

    def decode(path, label):
      image = tf.io.decode_image(
        tf.io.read_file(path), channels=self.channels, expand_animations=False
      )
      image = tf.image.convert_image_dtype(image, tf.float32)
      shape = tf.shape(image)
      image = tf.cond(
        tf.reduce_all(shape[:2] == self.size),
        lambda: image,
        lambda: _square_crop_resize(image, self.size),
      )
      out = {"image": tf.ensure_shape(image, self.shape)}
      if self.classes is not None:
        out["label"] = label
      return out

    return _tf_stream(
      raw_epochs,
      decode,
      examples=len(paths),
      evaluation=evaluation,
      batch_size=batch_size,
      start=start,
    )
