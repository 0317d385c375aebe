"""Sample-quality metrics: FID / KID / Inception Score, the FID Inception-v3, and an offline digits metric.

Four parts:
- Metrics on features and logits, in float64 numpy: `frechet_distance` (FID, Heusel et al. 2017),
  `kernel_inception_distance` (KID, Binkowski et al. 2018), `inception_score` (IS, Salimans et al. 2016).
- `FIDInceptionV3`: the Inception-v3 that FID tools use (pytorch-fid's FID Inception, whose weights
  replicate the 2015-12-05 TensorFlow graph), in Flax, loaded from the published `.pth` without torch.
- `dataset_statistics`: mean / covariance (and features) of a dataset's pool-3 features, cached as npz
  keyed by dataset, split and resolution.
- `DigitsClassifier` / `digits_metric`: a small classifier of scikit-learn's 8x8 digits, trained here
  in seconds, whose penultimate features give an offline Frechet distance for the embedded default.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import pth_reader

# ----------------------------------------------------------------------------------------------
# Metrics on features and logits (float64 numpy).
# ----------------------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (unbiased, ddof=1) of features, in float64.

  Args:
    features: [N, D], N >= 2.

  Returns:
    mu [D], sigma [D, D].
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt_eigenvalues(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Eigen-decomposition of a symmetric PSD matrix with round-off negatives and noise set to 0.

  Eigenvalues below `D * eps * max|eigenvalue|` cannot be told apart from 0 in float64 (eigh is
  backward stable to that size), so they are set to exactly 0: then an exactly singular covariance
  contributes nothing, instead of sqrt(round-off) ~ 1e-8 per null direction.
  """
  matrix = (matrix + matrix.T) / 2
  w, v = np.linalg.eigh(matrix)
  tol = matrix.shape[0] * np.finfo(np.float64).eps * max(np.abs(w).max(initial=0.0), 1e-300)
  return np.where(w > tol, w, 0.0), v


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})   (Heusel et al. 2017).

  tr((sigma1 sigma2)^{1/2}) is the sum of the square roots of the eigenvalues of sigma1 sigma2, which
  are those of the symmetric PSD matrix sigma1^{1/2} sigma2 sigma1^{1/2} (AB and BA share their
  eigenvalues). Two symmetric eigen-decompositions compute it with no inverse and no complex
  round-off, so singular covariances (fewer samples than features) need no offset.

  Args:
    mu1, mu2: [D] means. sigma1, sigma2: [D, D] symmetric PSD covariances.

  Returns:
    d^2 >= 0 (FID when the statistics are of Inception pool-3 features).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
      f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
      f"sigma2 {sigma2.shape}"
    )
  w1, v1 = _psd_sqrt_eigenvalues(sigma1)
  sqrt_sigma1 = (v1 * np.sqrt(w1)) @ v1.T
  w, _ = _psd_sqrt_eigenvalues(sqrt_sigma1 @ sigma2 @ sqrt_sigma1)
  tr_covmean = np.sqrt(w).sum()
  diff = mu1 - mu2
  distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  return float(max(distance, 0.0))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / D + 1)^3 (Binkowski et al. 2018).

  MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 mean_{i,j} k(x_i, y_j).

  Args:
    x: [m, D], y: [n, D] features, m, n >= 2.

  Returns:
    The estimate (may be negative: it is unbiased for MMD^2 >= 0).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n, dim = x.shape[0], y.shape[0], x.shape[1]
  if m < 2 or n < 2 or y.shape[1] != dim:
    raise ValueError(f"need [m >= 2, D] and [n >= 2, D] features, got {x.shape} and {y.shape}")
  k_xx = (x @ x.T / dim + 1.0) ** 3
  k_yy = (y @ y.T / dim + 1.0) ** 3
  k_xy = (x @ y.T / dim + 1.0) ** 3
  term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
  key: jax.Array,
  features1: np.ndarray,
  features2: np.ndarray,
  *,
  num_subsets: int = 100,
  subset_size: int = 1000,
) -> tuple[float, float]:
  """KID: the mean and std of `polynomial_mmd2_unbiased` over random subsets (Binkowski et al. 2018).

  As the standard implementations (the KID paper's code, torch-fidelity, clean-fid): each of
  `num_subsets` subsets draws min(N1, N2, subset_size) rows of each feature set without replacement.

  Args:
    key: PRNG key choosing the subsets.
    features1: [N1, D], features2: [N2, D].
    num_subsets: how many subsets.
    subset_size: rows per subset (capped by N1 and N2).

  Returns:
    (mean, std) over subsets (std with ddof=0, as torch-fidelity reports it).
  """
  features1 = np.asarray(features1, np.float64)
  features2 = np.asarray(features2, np.float64)
  n1, n2 = features1.shape[0], features2.shape[0]
  m = min(n1, n2, subset_size)
  # The subsets are drawn on the host from a numpy stream seeded by the key's bits.
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  values = []
  for _ in range(num_subsets):
    idx1 = rng.choice(n1, m, replace=False)
    idx2 = rng.choice(n2, m, replace=False)
    values.append(polynomial_mmd2_unbiased(features1[idx1], features2[idx2]))
  return float(np.mean(values)), float(np.std(values))


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
  """IS = exp(E_x KL(p(y|x) || p(y))) per split, p(y) the split's mean prediction (Salimans et al. 2016).

  Splits are consecutive blocks [i N / s, (i + 1) N / s), as in the original implementation.

  Args:
    logits: [N, K] classifier logits (softmax gives p(y|x)).
    num_splits: how many splits.

  Returns:
    (mean, std) of the per-split scores; 1 <= IS <= K.
  """
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if n < num_splits:
    raise ValueError(f"{n} samples cannot make {num_splits} splits")
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for i in range(num_splits):
    part = log_p[i * n // num_splits : (i + 1) * n // num_splits]
    p = np.exp(part)
    log_p_y = np.log(p.mean(axis=0))
    kl = (p * (part - log_p_y)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# The FID Inception-v3.
# ----------------------------------------------------------------------------------------------

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILENAME
)
INCEPTION_SHA256_PREFIX = (
  "6726825d"  # torch-hub convention: the file name ends with its hash prefix
)
INCEPTION_SIZE = 299
BATCH_NORM_EPS = 1e-3  # the TensorFlow graph's batch-norm epsilon


def bilinear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """The [size_out, size_in] matrix of 1-D bilinear resizing with half-pixel centres.

  As torch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing): output pixel i
  reads source coordinate s = max((i + 1/2) size_in / size_out - 1/2, 0) and mixes pixels floor(s) and
  floor(s) + 1 (clamped to the edge) with weights 1 - frac(s), frac(s).
  """
  src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
  i1 = np.minimum(i0 + 1, size_in - 1)
  frac = src - i0
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (np.arange(size_out), i0), 1.0 - frac)
  np.add.at(matrix, (np.arange(size_out), i1), frac)
  return matrix


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of [B, H, W, C] to [B, size, size, C] (torch's align_corners=False)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  rows = jnp.asarray(bilinear_resize_matrix(h, size), images.dtype)
  cols = jnp.asarray(bilinear_resize_matrix(w, size), images.dtype)
  return jnp.einsum("yh,bhwc,xw->byxc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


class _ConvBN(nn.Module):
  """Convolution (no bias) + batch norm in inference mode + ReLU, with the batch norm folded in.

  Folding: BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s), s = gamma / sqrt(var + eps), so the
  parameters are a kernel [kh, kw, C_in, C_out] and a bias [C_out] (see `inception_params_from_state_dict`).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    (ph, pw) = self.padding
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(self.strides, self.strides),
      padding=((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return nn.relu(y + bias)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 average pool, stride 1, padding 1, averaging over the pixels inside the image only."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class _InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _ConvBN(64, (1, 1), name="branch1x1")(x)
    b5 = _ConvBN(48, (1, 1), name="branch5x5_1")(x)
    b5 = _ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = _ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = _ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = _ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = _ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = _ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = _ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = _ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = _ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class _InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _ConvBN(192, (1, 1), name="branch1x1")(x)
    b7 = _ConvBN(c7, (1, 1), name="branch7x7_1")(x)
    b7 = _ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = _ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = _ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = _ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = _ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = _ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = _ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = _ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = _ConvBN(192, (1, 1), name="branch3x3_1")(x)
    b3 = _ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = _ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = _ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = _ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = _ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class _InceptionE(nn.Module):
  """The last blocks. The FID graph's second one (Mixed_7c) pools with max instead of average."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = _ConvBN(320, (1, 1), name="branch1x1")(x)
    b3 = _ConvBN(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        _ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        _ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = _ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = _ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        _ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        _ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3_same(x)
    bp = _ConvBN(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3 (pytorch-fid's `fid_inception_v3`, the TF 2015-12-05 graph), inference only.

  Its quirks, kept: the 3x3 average pools of the mixed blocks ignore padding (TensorFlow's
  behaviour), Mixed_7c max-pools, inputs are resized to 299x299 bilinearly (half-pixel centres, no
  antialias) and scaled from [0, 1] to [-1, 1]; batch norms (eps 1e-3) are folded into the convolutions.

  Call: `model.apply({"params": params}, images)` with images [B, H, W, C] in [0, 1], C in {1, 3}
  (one channel is repeated to three). Returns (pool3 [B, 2048], logits [B, num_classes]).
  With `mutable=["intermediates"]` it also sows block0 (after the first max pool, [B, 73, 73, 64]),
  block1 ([B, 35, 35, 192]), mixed_5b ([B, 35, 35, 256]), block2 ([B, 17, 17, 768]) and block3
  ([B, 8, 8, 2048]).
  """

  num_classes: int = 1008

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"images must be [B, H, W, 1 or 3] in [0, 1], got shape {images.shape}")
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = resize_bilinear(x, INCEPTION_SIZE)
    x = 2.0 * x - 1.0
    x = _ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = _ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = _ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    self.sow("intermediates", "block0", x)
    x = _ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = _ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    self.sow("intermediates", "block1", x)
    x = _InceptionA(32, name="Mixed_5b")(x)
    self.sow("intermediates", "mixed_5b", x)
    x = _InceptionA(64, name="Mixed_5c")(x)
    x = _InceptionA(64, name="Mixed_5d")(x)
    x = _InceptionB(name="Mixed_6a")(x)
    x = _InceptionC(128, name="Mixed_6b")(x)
    x = _InceptionC(160, name="Mixed_6c")(x)
    x = _InceptionC(160, name="Mixed_6d")(x)
    x = _InceptionC(192, name="Mixed_6e")(x)
    self.sow("intermediates", "block2", x)
    x = _InceptionD(name="Mixed_7a")(x)
    x = _InceptionE(name="Mixed_7b")(x)
    x = _InceptionE(max_pool=True, name="Mixed_7c")(x)
    self.sow("intermediates", "block3", x)
    pool3 = x.mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(pool3)
    return pool3, logits


@functools.cache
def inception_param_shapes(num_classes: int = 1008) -> dict:
  """The Flax parameter tree of `FIDInceptionV3` as `jax.ShapeDtypeStruct`s (nothing computed)."""
  model = FIDInceptionV3(num_classes)
  x = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def inception_params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Maps a pytorch-fid state dict (published layout) to `FIDInceptionV3` params, folding batch norms.

  Layout: `<block>[.<branch>].conv.weight` [C_out, C_in, kh, kw] and `<...>.bn.{weight, bias,
  running_mean, running_var}` [C_out] per convolution, `fc.weight` [K, 2048], `fc.bias` [K].
  `*.num_batches_tracked` and `AuxLogits.*` (unused at inference) are ignored; any other unknown or
  missing key, or a wrong shape, is an error naming it.

  Returns:
    params: the nested dict `FIDInceptionV3.apply` takes, float32.
  """
  state_dict = dict(state_dict)
  if "fc.weight" not in state_dict:
    raise ValueError("the state dict has no fc.weight: not the FID Inception layout")
  shapes = inception_param_shapes(int(np.shape(state_dict["fc.weight"])[0]))
  used: set[str] = set()

  def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state_dict:
      raise ValueError(f"the FID Inception state dict misses {key}")
    value = np.asarray(state_dict[key], np.float64)
    if value.shape != shape:
      raise ValueError(f"{key} has shape {value.shape}, the FID Inception expects {shape}")
    used.add(key)
    return value

  def convert(node: Mapping[str, Any], path: tuple[str, ...]) -> dict:
    if "kernel" not in node:
      return {name: convert(child, (*path, name)) for name, child in node.items()}
    prefix = ".".join(path)
    if path == ("fc",):
      k, d = node["kernel"].shape[1], node["kernel"].shape[0]
      return {
        "kernel": take("fc.weight", (k, d)).T.astype(np.float32),
        "bias": take("fc.bias", (k,)).astype(np.float32),
      }
    kh, kw, c_in, c_out = node["kernel"].shape
    weight = take(f"{prefix}.conv.weight", (c_out, c_in, kh, kw))
    gamma = take(f"{prefix}.bn.weight", (c_out,))
    beta = take(f"{prefix}.bn.bias", (c_out,))
    mean = take(f"{prefix}.bn.running_mean", (c_out,))
    var = take(f"{prefix}.bn.running_var", (c_out,))
    scale = gamma / np.sqrt(var + BATCH_NORM_EPS)
    return {
      "kernel": (weight * scale[:, None, None, None]).transpose(2, 3, 1, 0).astype(np.float32),
      "bias": (beta - mean * scale).astype(np.float32),
    }

  params = convert(shapes, ())
  unused = [
    k
    for k in state_dict
    if k not in used and not k.endswith(".num_batches_tracked") and not k.startswith("AuxLogits.")
  ]
  if unused:
    raise ValueError(f"keys of the state dict that the FID Inception does not use: {unused[:10]}")
  return params


def load_inception_params(path: str | os.PathLike) -> dict:
  """Loads the FID Inception weights from a local `.pth` (the published file, read without torch).

  Args:
    path: the weights file, normally `config.eval.inception_path`.

  Raises:
    FileNotFoundError: saying where the file is published and where to put it. Nothing is downloaded.
    ValueError: a published-name file whose checksum is wrong, or a state dict of another layout.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"FID Inception weights not found at {path!r}. Download {INCEPTION_FILENAME} (95 MB, the "
      f"weights pytorch-fid publishes) from {INCEPTION_URL} and save it as {path!r}, or set "
      "config.eval.inception_path to where the file is. It is read without PyTorch."
    )
  if os.path.basename(path) == INCEPTION_FILENAME:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    if not digest.hexdigest().startswith(INCEPTION_SHA256_PREFIX):
      raise ValueError(
        f"{path} has SHA-256 {digest.hexdigest()[:16]}..., not {INCEPTION_SHA256_PREFIX}... as its "
        f"name says: the download is incomplete or corrupt. Download it again from {INCEPTION_URL}."
      )
  return inception_params_from_state_dict(pth_reader.load_pth(path))


def jit_inference(fn: Callable) -> Callable:
  """`jax.jit` for forward-only convolutional networks, with XLA CPU's YNN fusion off on CPU.

  On this project's 2-core CPU, YNN fusion off ran the Inception forward pass 2.0x faster
  (benchmarks/inception_throughput.py); other backends get a plain `jax.jit`.
  """
  if jax.default_backend() == "cpu":
    return jax.jit(fn, compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})
  return jax.jit(fn)


def get_inception_fn(
  params: Mapping[str, Any], *, num_classes: int | None = None
) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """A jitted `images [B, H, W, C] in [0, 1] -> (pool3 [B, 2048], logits [B, K])` of the FID Inception."""
  if num_classes is None:
    num_classes = int(params["fc"]["bias"].shape[0])
  model = FIDInceptionV3(num_classes)
  params = jax.tree.map(jnp.asarray, params)
  return jit_inference(lambda images: model.apply({"params": params}, images))


def batched_features(
  feature_fn: Callable[[jax.Array], tuple[jax.Array, ...]],
  images: np.ndarray,
  batch_size: int = 50,
) -> tuple[np.ndarray, ...]:
  """Applies `feature_fn` over `images` [N, ...] in batches (the last padded), returning numpy [N, ...]."""
  n = images.shape[0]
  outputs: list[tuple[np.ndarray, ...]] = []
  for start in range(0, n, batch_size):
    batch = images[start : start + batch_size]
    count = batch.shape[0]
    if count < batch_size:  # pad, so that one compiled shape serves every batch
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
    outputs.append(tuple(np.asarray(o)[:count] for o in feature_fn(batch)))
  return tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))


# ----------------------------------------------------------------------------------------------
# Dataset statistics, cached.
# ----------------------------------------------------------------------------------------------


def statistics_path(cache_dir: str | os.PathLike, dataset: str, split: str, resolution: int) -> str:
  """Where the statistics of (dataset, split, resolution) are cached."""
  name = f"{dataset.lower()}_{split}_{int(resolution)}px_inception_stats.npz"
  return os.path.join(os.fspath(cache_dir), name)


def load_statistics(path: str | os.PathLike, resolution: int) -> dict[str, np.ndarray]:
  """Loads cached statistics, refusing those computed at another resolution.

  Returns:
    dict with mu [D], sigma [D, D] (float64), features [N, D] (float32), resolution, dataset, split.

  Raises:
    ValueError: the file's resolution is not `resolution` (the message says what to do).
  """
  with np.load(path) as data:
    stats = {k: data[k] for k in data.files}
  stored = int(stats["resolution"])
  if stored != int(resolution):
    raise ValueError(
      f"the dataset statistics in {os.fspath(path)} were computed at {stored}x{stored}, but this "
      f"evaluation is at {resolution}x{resolution}: FID against them would be meaningless. Point "
      "the evaluation at statistics of the same resolution, or delete the file to recompute them."
    )
  return stats


def dataset_statistics(
  feature_fn: Callable[[jax.Array], tuple[jax.Array, ...]],
  batches: Iterable[np.ndarray],
  *,
  cache_dir: str | os.PathLike,
  dataset: str,
  split: str,
  resolution: int,
) -> dict[str, np.ndarray]:
  """Pool-3 statistics of a dataset split, computed once and cached as npz.

  Args:
    feature_fn: images [B, H, W, C] in [0, 1] -> (pool3 [B, D], ...), e.g. `get_inception_fn(params)`.
    batches: the split's images, each batch [..., H, W, C] in [0, 1] (leading axes, e.g. devices,
      are flattened). Only read when the cache has no entry.
    cache_dir: directory of the cache; dataset, split, resolution: its key.

  Returns:
    dict with mu [D], sigma [D, D] (float64), features [N, D] (float32, for KID), resolution,
    dataset, split.

  Raises:
    ValueError: a batch is not resolution x resolution, or the cached file is of another resolution.
  """
  path = statistics_path(cache_dir, dataset, split, resolution)
  if os.path.exists(path):
    return load_statistics(path, resolution)
  features, batch_size = [], None
  for batch in batches:
    batch = np.asarray(batch)
    h, w = batch.shape[-3:-1]
    if (h, w) != (resolution, resolution):
      raise ValueError(
        f"{dataset}/{split} yields {h}x{w} images, but its statistics were asked at "
        f"{resolution}x{resolution}: set the resolution to the data's (config.data.image_size)."
      )
    batch = batch.reshape(-1, *batch.shape[-3:])
    batch_size = batch_size or batch.shape[0]  # a shorter last batch is padded: no recompilation
    features.append(batched_features(feature_fn, batch, batch_size)[0].astype(np.float32))
  if not features:
    raise ValueError(f"{dataset}/{split} yielded no images")
  features = np.concatenate(features)
  mu, sigma = feature_statistics(features)
  stats = dict(
    mu=mu,
    sigma=sigma,
    features=features,
    resolution=np.int64(resolution),
    dataset=dataset,
    split=split,
  )
  os.makedirs(os.fspath(cache_dir), exist_ok=True)
  # Write to a temporary name, then rename: an interrupted run leaves no half-written cache.
  with tempfile.NamedTemporaryFile(dir=os.fspath(cache_dir), suffix=".npz", delete=False) as f:
    np.savez(f, **stats)
  os.replace(f.name, path)
  return load_statistics(path, resolution)


# ----------------------------------------------------------------------------------------------
# The offline digits metric.
# ----------------------------------------------------------------------------------------------

# The split of datasets.py's DIGITS source: scikit-learn's digits in their shipped order, the first
# 1,500 train and the last 297 are held out (about 10% of each class in both).
DIGITS_NUM_TRAIN = 1500
DIGITS_CONFIDENCE = 0.9  # "confident" means a top class probability above this
# The classifier's training recipe; the cache key is a hash of it, so changing it retrains.
_DIGITS_RECIPE = dict(
  hidden=256, features=16, steps=1500, batch_size=128, lr=2e-3, weight_decay=1e-3, seed=0, version=1
)


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits of one split, as `datasets.py` serves them.

  Args:
    split: "train" (the first 1,500) or "test" (the last 297).

  Returns:
    images [N, 8, 8, 1] float32 in [0, 1] (the 0..16 values divided by 16), labels [N] int32.
  """
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  if split == "train":
    return images[:DIGITS_NUM_TRAIN], labels[:DIGITS_NUM_TRAIN]
  if split == "test":
    return images[DIGITS_NUM_TRAIN:], labels[DIGITS_NUM_TRAIN:]
  raise ValueError(f"split = {split!r}; valid choices: train, test")


class DigitsClassifier(nn.Module):
  """An MLP on 8x8 digits: 64 -> hidden -> features (the metric's feature space) -> 10 logits."""

  hidden: int = 256
  features: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, 8, 8, 1] in [0, 1] -> (penultimate features [B, features], logits [B, 10])."""
    x = images.reshape(images.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    features = nn.relu(nn.Dense(self.features, name="features")(x))
    return features, nn.Dense(self.num_classes, name="logits")(features)


def _random_shifts(key: jax.Array, images: jax.Array) -> jax.Array:
  """Shifts each image by -1, 0 or +1 pixel along each axis, filling with paper (0)."""
  key_y, key_x = jax.random.split(key)
  b, h, w, _ = images.shape
  dy = jax.random.randint(key_y, (b,), 0, 3)
  dx = jax.random.randint(key_x, (b,), 0, 3)
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  crop = lambda img, y, x: jax.lax.dynamic_slice(img, (y, x, 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, dy, dx)


def train_digits_classifier(
  key: jax.Array,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  hidden: int = 256,
  features: int = 16,
  steps: int = 1500,
  batch_size: int = 128,
  lr: float = 2e-3,
  weight_decay: float = 1e-3,
) -> dict:
  """Trains `DigitsClassifier` by AdamW (cosine-decayed lr) on random +-1 pixel shifts of the images.

  Deterministic for a given key on a given platform; a few seconds on a CPU.

  Args:
    key: PRNG key (initialisation, batches, shifts).
    images: [N, 8, 8, 1] in [0, 1]; labels: [N] in 0..9.

  Returns:
    params of `DigitsClassifier(hidden, features)`.
  """
  import optax

  model = DigitsClassifier(hidden, features)
  key, init_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1, *images.shape[1:])))["params"]
  optimizer = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
  opt_state = optimizer.init(params)
  images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)

  def loss_fn(params, x, y):
    _, logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, opt_state, key):
    batch_key, shift_key = jax.random.split(key)
    index = jax.random.choice(batch_key, images.shape[0], (batch_size,), replace=False)
    x = _random_shifts(shift_key, images[index])
    grads = jax.grad(loss_fn)(params, x, labels[index])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # One jitted step per call: cheap here, and it avoids XLA CPU's slow rolled loops over gradients.
  for step_key in jax.random.split(key, steps):
    params, opt_state = step(params, opt_state, step_key)
  return jax.tree.map(np.asarray, params)


def default_cache_dir() -> str:
  """$SCORESDE_CACHE, else $XDG_CACHE_HOME/scoresde_jax, else ~/.cache/scoresde_jax."""
  if "SCORESDE_CACHE" in os.environ:
    return os.environ["SCORESDE_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
  return os.path.join(base, "scoresde_jax")


def get_digits_classifier(
  cache_dir: str | os.PathLike | None = None,
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """The digits metric's classifier, trained on the train split at first use and cached as npz.

  Args:
    cache_dir: where the trained weights are kept (default: `default_cache_dir()`).

  Returns:
    A function images [N, 8, 8, 1] in [0, 1] -> (features [N, 16], logits [N, 10]), numpy.
  """
  recipe = dict(_DIGITS_RECIPE)
  digest = hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()[:12]
  cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
  path = os.path.join(cache_dir, f"digits_classifier_{digest}.npz")
  model = DigitsClassifier(recipe["hidden"], recipe["features"])
  if os.path.exists(path):
    with np.load(path) as data:
      params: dict = {}
      for name in data.files:
        layer, leaf = name.split("/")
        params.setdefault(layer, {})[leaf] = data[name]
  else:
    images, labels = load_digits_split("train")
    params = train_digits_classifier(
      jax.random.key(recipe["seed"]),
      images,
      labels,
      **{k: recipe[k] for k in ("hidden", "features", "steps", "batch_size", "lr", "weight_decay")},
    )
    os.makedirs(cache_dir, exist_ok=True)
    flat = {
      f"{layer}/{leaf}": value for layer, leaves in params.items() for leaf, value in leaves.items()
    }
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npz", delete=False) as f:
      np.savez(f, **flat)
    os.replace(f.name, path)
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  return lambda images: tuple(np.asarray(o) for o in apply(jnp.asarray(images, jnp.float32)))


def _to_digit_images(samples: np.ndarray) -> np.ndarray:
  """[N, 8k, 8k(, 1)] samples -> [N, 8, 8, 1] in [0, 1]: clipped, k x k blocks averaged."""
  samples = np.asarray(samples, np.float32)
  if samples.ndim == 3:
    samples = samples[..., None]
  n, h, w, c = samples.shape
  if c != 1 or h != w or h % 8:
    raise ValueError(f"digit samples must be [N, 8k, 8k, 1], got shape {samples.shape}")
  k = h // 8
  samples = samples.reshape(n, 8, k, 8, k, 1).mean(axis=(2, 4))
  return np.clip(samples, 0.0, 1.0)


def _class_entropy(logits: np.ndarray) -> float:
  """Entropy (nats) of the histogram of predicted classes: log 10 = 2.303 when all are equally common."""
  counts = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1])
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def _confident_share(logits: np.ndarray) -> float:
  logits = np.asarray(logits, np.float64)
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  return float(np.mean(p.max(axis=1) / p.sum(axis=1) > DIGITS_CONFIDENCE))


def digits_metric(
  samples: np.ndarray,
  *,
  classifier: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
  reference: np.ndarray | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
  """Offline sample quality for the digits: needs no downloaded weights.

  Args:
    samples: [N, 8k, 8k, 1] (or [N, 8k, 8k]) in [0, 1] (clipped; k x k blocks are averaged to 8x8).
    classifier: from `get_digits_classifier` (built from `cache_dir` when None).
    reference: the real digits to compare with, [M, 8, 8, 1]; default the held-out test split.
    cache_dir: the classifier's cache directory (see `get_digits_classifier`).

  Returns:
    frechet_distance: between N(mu, sigma) of the classifier's penultimate features on the samples
      and on the reference (as FID, Heusel et al. 2017). It shrinks with the sample count (bias
      ~ 1/N): compare runs at the same N.
    confident_share: share of samples whose top class probability exceeds 0.9.
    class_entropy: entropy (nats) of the predicted-class histogram, log 10 = 2.303 at full coverage.
    reference_confident_share, reference_class_entropy: the same for the reference digits, i.e.
      what perfect samples would score.
    num_samples: N.
  """
  if classifier is None:
    classifier = get_digits_classifier(cache_dir)
  if reference is None:
    reference, _ = load_digits_split("test")
  features, logits = classifier(_to_digit_images(samples))
  ref_features, ref_logits = classifier(_to_digit_images(reference))
  mu, sigma = feature_statistics(features)
  ref_mu, ref_sigma = feature_statistics(ref_features)
  return {
    "frechet_distance": frechet_distance(mu, sigma, ref_mu, ref_sigma),
    "confident_share": _confident_share(logits),
    "class_entropy": _class_entropy(logits),
    "reference_confident_share": _confident_share(ref_logits),
    "reference_class_entropy": _class_entropy(ref_logits),
    "num_samples": int(features.shape[0]),
  }
