"""Checks of closed_form: exact scores and densities of Gaussian / mixture data under the SDEs.

If x0 ~ N(mu, Sigma) and x_t = a(t) x0 + std(t) z, then x_t ~ N(a mu, a^2 Sigma + std^2 I). Run in
float64 so that the only differences left are quadrature and round-off errors, bounded below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import closed_form
import sde_lib


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def sdes():
  return {
    "vpsde": sde_lib.VPSDE(),
    "subvpsde": sde_lib.subVPSDE(),
    "vesde": sde_lib.VESDE(),
  }


MEAN = np.array([0.5, -1.0, 2.0, 0.3])
_A = np.array(
  [[1.0, 0.3, 0.0, 0.2], [0.0, 0.7, -0.4, 0.0], [0.2, 0.0, 1.5, 0.1], [0.0, 0.1, 0.0, 0.4]]
)
COV = _A @ _A.T  # a full, non-isotropic covariance (eigenvalues from about 0.1 to 2.6)

WEIGHTS = np.array([0.2, 0.5, 0.3])
MEANS = np.array([[-2.0, 0.0], [1.0, 1.5], [1.5, -1.0]])
COVS = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]], [[0.1, 0.0], [0.0, 0.6]]])


@pytest.mark.parametrize("name", ["vpsde", "subvpsde", "vesde"])
def test_gaussian_logp_is_the_gaussian_of_the_marginal(name):
  sde = sdes()[name]
  t = jnp.array([0.0, 0.01, 0.3, 1.0])
  x = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))  # event shape (2, 2, 1), D = 4
  logp = closed_form.gaussian_logp(sde, MEAN, COV, x, t)
  a, std = closed_form.mean_coeff_and_std(sde, t)
  for b in range(4):
    cov_t = a[b] ** 2 * COV + std[b] ** 2 * np.eye(4)
    expected = stats.multivariate_normal(a[b] * MEAN, cov_t).logpdf(np.asarray(x[b]).ravel())
    np.testing.assert_allclose(logp[b], expected, rtol=1e-10)


@pytest.mark.parametrize("name", ["vpsde", "subvpsde", "vesde"])
def test_gaussian_score_is_the_gradient_of_the_log_density(name):
  sde = sdes()[name]
  t = jnp.array([1e-4, 0.1, 0.5, 1.0])
  x = jax.random.normal(jax.random.key(1), (4, 4))
  score_fn = closed_form.gaussian_score_fn(sde, MEAN, COV)
  grad = jax.grad(lambda x: jnp.sum(closed_form.gaussian_logp(sde, MEAN, COV, x, t)))(x)
  # Both are exact; they differ by the round-off of two Cholesky solves (cond(Sigma) about 30).
  np.testing.assert_allclose(score_fn(None, x, t), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["vpsde", "vesde"])
def test_mixture_score_is_the_gradient_of_the_log_density(name):
  sde = sdes()[name]
  logp_and_score = closed_form.gaussian_mixture_logp_and_score(sde, WEIGHTS, MEANS, COVS)
  t = jnp.array([0.0, 0.05, 0.4, 1.0])
  x = 2.0 * jax.random.normal(jax.random.key(2), (4, 2))
  grad = jax.grad(lambda x: jnp.sum(logp_and_score(x, t)[0]))(x)
  np.testing.assert_allclose(logp_and_score(x, t)[1], grad, rtol=1e-9, atol=1e-12)
  score_fn = closed_form.gaussian_mixture_score_fn(sde, WEIGHTS, MEANS, COVS)
  np.testing.assert_array_equal(score_fn(None, x, t), logp_and_score(x, t)[1])


def test_mixture_density_at_time_zero_is_the_scipy_mixture():
  logp_and_score = closed_form.gaussian_mixture_logp_and_score(
    sde_lib.VPSDE(), WEIGHTS, MEANS, COVS
  )
  x = 2.0 * jax.random.normal(jax.random.key(3), (16, 2))
  logp = logp_and_score(x, jnp.zeros(16))[0]
  expected = np.log(
    sum(
      w * stats.multivariate_normal(m, c).pdf(np.asarray(x))
      for w, m, c in zip(WEIGHTS, MEANS, COVS, strict=True)
    )
  )
  np.testing.assert_allclose(logp, expected, rtol=1e-10)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("name", ["vpsde", "vesde"])
def test_mixture_density_normalises_2d(name, t):
  # Midpoint rule on a grid covering +-12 std of the widest component. For a Gaussian integrand
  # the rule converges spectrally, error about exp(-2 pi^2 s^2 / h^2) for the narrowest std
  # s >= 0.3 and spacing h = 0.13 (at t = 0; both scale alike later): far below 1e-6. The
  # truncated tails beyond 12 std are below 1e-30.
  sde = sdes()[name]
  logp_and_score = closed_form.gaussian_mixture_logp_and_score(sde, WEIGHTS, MEANS, COVS)
  a, std = closed_form.mean_coeff_and_std(sde, jnp.array([t]))
  center = float(a[0]) * MEANS.mean(0)
  half = 12.0 * float(np.sqrt(a[0] ** 2 * 0.7 + std[0] ** 2)) + float(a[0]) * 3.0
  n = 201
  h = 2 * half / n
  u = -half + h * (np.arange(n) + 0.5)
  grid = np.stack(np.meshgrid(center[0] + u, center[1] + u, indexing="ij"), -1).reshape(-1, 2)
  logp = logp_and_score(jnp.asarray(grid), jnp.full((grid.shape[0],), t))[0]
  total = float(jnp.sum(jnp.exp(logp))) * h**2
  assert abs(total - 1.0) < 1e-6, total


def test_mixture_density_normalises_1d():
  # A 1-D mixture under sub-VP, where std(t) = 1 - e^{-B} differs from VP's.
  sde = sde_lib.subVPSDE()
  logp_and_score = closed_form.gaussian_mixture_logp_and_score(
    sde, jnp.array([0.6, 0.4]), jnp.array([[-1.0], [2.0]]), jnp.array([[[0.05]], [[0.3]]])
  )
  x = jnp.linspace(-12.0, 12.0, 24_001)[:, None]
  h = float(x[1, 0] - x[0, 0])
  for t in (0.0, 0.2, 1.0):
    p = jnp.exp(logp_and_score(x, jnp.full((x.shape[0],), t))[0])
    # Trapezoid rule on a smooth, Gaussian-tailed integrand: error well below 1e-8.
    total = float(h * (jnp.sum(p) - 0.5 * (p[0] + p[-1])))
    assert abs(total - 1.0) < 1e-8, (t, total)


@pytest.mark.parametrize("name", ["vpsde", "subvpsde"])
def test_mixture_score_at_large_t_is_the_prior_score(name):
  # At T the VP kernel keeps a(1) = e^{-B(1)/2} = 6.6e-3 of the data, so p_T = N(0, I) up to terms of
  # order a |mu| (<= 0.015 here) and a^2 |Sigma| in the score; the prior's score is -x.
  sde = sdes()[name]
  score_fn = closed_form.gaussian_mixture_score_fn(sde, WEIGHTS, MEANS, COVS)
  x = jax.random.normal(jax.random.key(4), (64, 2))
  t = jnp.full((64,), sde.T)
  err = np.max(np.abs(score_fn(None, x, t) + x))
  assert err < 2e-2, err
  # ... and the same score is far from -x early on, so the check above is not vacuous.
  assert np.max(np.abs(score_fn(None, x, 0.1 * t) + x)) > 0.5


def test_mixture_score_under_ve_at_large_t_is_the_prior_score():
  # VE keeps the data mean: p_T = mixture of N(mu_k, Sigma_k + sigma_max^2 I), prior N(0, sigma_max^2 I).
  # Relative to the prior score's scale |x| / sigma_max^2 the difference is |mu| / |x|, so compare
  # sigma_max^2 score + x with the mean shift (at most |mu_k| = 2.1 plus O(Sigma / sigma_max^2)).
  sde = sde_lib.VESDE()
  score_fn = closed_form.gaussian_mixture_score_fn(sde, WEIGHTS, MEANS, COVS)
  x = sde.prior_sampling(jax.random.key(5), (64, 2))
  scaled = sde.sigma_max**2 * score_fn(None, x, jnp.ones(64)) + x
  assert np.max(np.abs(scaled)) < 2.5
  np.testing.assert_allclose(np.mean(scaled, 0), WEIGHTS @ MEANS, atol=0.05)
