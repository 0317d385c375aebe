"""FID / KID / IS against closed forms and direct numpy, and the dataset-statistics cache."""

import jax
import numpy as np
import pytest
import scipy.linalg

import evaluation


def _orthogonal(rng, d):
  return np.linalg.qr(rng.standard_normal((d, d)))[0]


def _random_spd(rng, d, cond=10.0):
  q = _orthogonal(rng, d)
  return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def _scipy_frechet(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_frechet_one_dimensional_closed_form():
  # W2^2 of two 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
  got = evaluation.frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]])
  assert got == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, rel=1e-14)


def test_frechet_commuting_covariances_closed_form():
  # sigma_i = Q diag(a_i) Q^T: tr sqrt(s1 s2) = sum sqrt(a1 a2), so d^2 = |dmu|^2 + sum (sqrt a1 - sqrt a2)^2.
  rng = np.random.default_rng(0)
  d = 32
  q = _orthogonal(rng, d)
  a1, a2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a1) - np.sqrt(a2)) ** 2)
  got = evaluation.frechet_distance(mu1, (q * a1) @ q.T, mu2, (q * a2) @ q.T)
  # float64 round-off of two eigh of 32x32 matrices with entries O(1): ~1e-13.
  assert got == pytest.approx(expected, rel=1e-10, abs=1e-11)


def test_frechet_matches_scipy_sqrtm_on_random_covariances():
  rng = np.random.default_rng(1)
  for d in (2, 10, 64):
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, cond=100.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    got = evaluation.frechet_distance(mu1, s1, mu2, s2)
    # Well conditioned (cond <= 100): both methods are accurate to ~1e-12 relative.
    assert got == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-9)
    # Symmetric in its two Gaussians.
    assert got == pytest.approx(evaluation.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_near_singular_covariances_closed_form():
  # Rank-deficient and nearly singular covariances in a shared random eigenbasis, where the exact
  # answer is sum(a1) + sum(a2) - 2 sum sqrt(a1 a2) + |dmu|^2.
  rng = np.random.default_rng(2)
  d = 128
  q = _orthogonal(rng, d)
  a1 = np.concatenate([rng.uniform(0.5, 2.0, 50), np.zeros(d - 50)])  # rank 50
  a2 = np.concatenate([rng.uniform(0.5, 2.0, 25), np.full(d - 25, 1e-12)])  # nearly singular
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  expected = np.sum((mu1 - mu2) ** 2) + a1.sum() + a2.sum() - 2 * np.sqrt(a1 * a2).sum()
  got = evaluation.frechet_distance(mu1, (q * a1) @ q.T, mu2, (q * a2) @ q.T)
  # Round-off: eigh is exact to ~d * eps * max eigenvalue ~ 3e-14 per eigenvalue. Without setting
  # the eigenvalues below that to 0, each of the ~100 null directions adds a square root of
  # round-off and the result is off by 1.4e-6 (measured; scipy's sqrtm: 1.3e-6); with it, by 7e-10.
  assert got == pytest.approx(expected, abs=1e-7)
  # Identical singular Gaussians are at distance 0 up to round-off (measured 1e-14; without the
  # thresholding 1.6e-6).
  s = (q * a1) @ q.T
  assert evaluation.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)


def test_frechet_from_fewer_samples_than_dimensions():
  # 20 samples of 64-D features: rank-19 covariances (the usual FID failure case of sqrtm).
  rng = np.random.default_rng(3)
  x = rng.standard_normal((20, 64))
  y = x + 0.1 * rng.standard_normal((20, 64))
  mu_x, s_x = evaluation.feature_statistics(x)
  mu_y, s_y = evaluation.feature_statistics(y)
  assert np.linalg.matrix_rank(s_x) == 19
  got = evaluation.frechet_distance(mu_x, s_x, mu_y, s_y)
  # Reference: the same formula through scipy's sqrtm of the *symmetric* PSD matrix
  # sqrt(s_x) s_y sqrt(s_x), whose trace of the square root equals tr sqrt(s_x s_y) (similar matrices).
  half = scipy.linalg.sqrtm(s_x).real
  ref_tr = np.trace(scipy.linalg.sqrtm(half @ s_y @ half)).real
  ref = np.sum((mu_x - mu_y) ** 2) + np.trace(s_x) + np.trace(s_y) - 2 * ref_tr
  # scipy's sqrtm of rank-deficient matrices is accurate to ~sqrt(eps) relative in the null space.
  assert got == pytest.approx(ref, rel=1e-5)
  assert evaluation.frechet_distance(mu_x, s_x, mu_x, s_x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="shapes do not match"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def _mmd2_loops(x, y):
  """The unbiased MMD^2 of Binkowski et al. (2018), Eq. 3, written as explicit sums."""
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_mmd2_matches_direct_sums():
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal((15, 6)), 0.5 + rng.standard_normal((11, 6))
  assert evaluation.polynomial_mmd2_unbiased(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-12)


def test_kid_subsets():
  rng = np.random.default_rng(5)
  x, y = rng.standard_normal((40, 8)), 0.3 + rng.standard_normal((30, 8))
  key = jax.random.key(0)
  # Subsets as large as the smaller set: every subset of y is all of y (permuted), so the spread
  # comes only from x's subsets; with subset_size >= both sizes and equal sizes it would be zero.
  mean, std = evaluation.kernel_inception_distance(key, x[:30], y, num_subsets=3, subset_size=100)
  assert mean == pytest.approx(_mmd2_loops(x[:30], y), rel=1e-10)
  assert std == pytest.approx(0.0, abs=1e-12)
  # Smaller subsets: the mean over subsets of the unbiased estimate, reproducible from the key.
  mean, std = evaluation.kernel_inception_distance(key, x, y, num_subsets=4, subset_size=10)
  assert (mean, std) == evaluation.kernel_inception_distance(
    key, x, y, num_subsets=4, subset_size=10
  )
  assert std > 0
  assert evaluation.kernel_inception_distance(
    jax.random.key(1), x, y, num_subsets=4, subset_size=10
  ) != (
    mean,
    std,
  )


def test_kid_is_unbiased_where_the_biased_estimate_is_not():
  # Same distribution: MMD^2 = 0. Average the estimate over 400 independent pairs of sets of 20.
  rng = np.random.default_rng(6)
  d, m, trials = 4, 20, 400
  unbiased, biased = [], []
  for _ in range(trials):
    x, y = rng.standard_normal((m, d)), rng.standard_normal((m, d))
    unbiased.append(evaluation.polynomial_mmd2_unbiased(x, y))
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3
    biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
  unbiased, biased = np.array(unbiased), np.array(biased)
  se = unbiased.std() / np.sqrt(trials)
  # z-score 4: fails by chance with probability 6e-5.
  assert abs(unbiased.mean()) < 4 * se
  # The V-statistic keeps the diagonal and is biased upwards by far more than that.
  assert biased.mean() > 10 * se


def test_inception_score_closed_forms():
  k = 10
  # Uniform predictions: p(y|x) = p(y), KL = 0, IS = 1.
  mean, std = evaluation.inception_score(np.zeros((100, k)), num_splits=5)
  assert (mean, std) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))
  # Confident and balanced: p(y|x) one-hot (logit gap 100: softmax mass off the top ~ 1e-43),
  # p(y) uniform, KL = log K, IS = K.
  labels = np.arange(100) % k
  logits = 100.0 * np.eye(k)[labels]
  mean, std = evaluation.inception_score(logits, num_splits=5)
  assert mean == pytest.approx(k, rel=1e-12)
  assert std == pytest.approx(0.0, abs=1e-10)
  # Confident but one class only: IS = 1 (no diversity).
  mean, _ = evaluation.inception_score(100.0 * np.eye(k)[np.zeros(100, int)], num_splits=2)
  assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_direct_numpy():
  rng = np.random.default_rng(7)
  logits = 3.0 * rng.standard_normal((103, 7))
  splits = 4
  scores = []
  for i in range(splits):
    part = logits[i * 103 // splits : (i + 1) * 103 // splits]
    p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
    py = p.mean(0)
    scores.append(np.exp(np.mean([np.sum(pi * np.log(pi / py)) for pi in p])))
  mean, std = evaluation.inception_score(logits, num_splits=splits)
  assert mean == pytest.approx(np.mean(scores), rel=1e-12)
  assert std == pytest.approx(np.std(scores), rel=1e-9)


def test_dataset_statistics_cache(tmp_path):
  rng = np.random.default_rng(8)
  images = rng.uniform(size=(2, 5, 4, 4, 3)).astype(np.float32)  # [devices, batch, H, W, C]
  calls = []

  def feature_fn(batch):
    calls.append(batch.shape)
    return (batch.reshape(batch.shape[0], -1)[:, :6] * 2.0,)

  kwargs = dict(cache_dir=tmp_path / "cache", dataset="toy", split="test", resolution=4)
  stats = evaluation.dataset_statistics(feature_fn, [images, images[:, :2]], **kwargs)
  feats = 2.0 * np.concatenate([images.reshape(10, -1), images[:, :2].reshape(4, -1)])[:, :6]
  np.testing.assert_allclose(stats["features"], feats, rtol=1e-7)
  np.testing.assert_allclose(stats["mu"], feats.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats["sigma"], np.cov(feats, rowvar=False), rtol=1e-6, atol=1e-12)
  assert calls == [
    (10, 4, 4, 3),
    (10, 4, 4, 3),
  ]  # the short last batch is padded to the first's size
  # Second call: read from the cache, the batches are not touched.
  again = evaluation.dataset_statistics(feature_fn, None, **kwargs)
  np.testing.assert_array_equal(again["sigma"], stats["sigma"])
  assert len(calls) == 2
  path = evaluation.statistics_path(tmp_path / "cache", "toy", "test", 4)
  with pytest.raises(ValueError, match="computed at 4x4, but this evaluation is at 8x8"):
    evaluation.load_statistics(path, 8)
  with pytest.raises(ValueError, match="yields 4x4 images, but its statistics were asked at 8x8"):
    evaluation.dataset_statistics(feature_fn, [images], **{**kwargs, "resolution": 8})
