"""Sample-quality metrics: FID / KID / Inception Score (the FID Inception and the digits metric follow).

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

import jax
import numpy as np

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
