"""Checks of likelihood against exact Gaussian log-densities, flows and 8-bit probabilities.

For data N(mu, Sigma) every built-in SDE keeps p_t Gaussian, N(a mu, C_t) with C_t = a^2 Sigma +
std^2 I, so the score (closed_form), the density log p_t, and even the probability-flow map are known
exactly: C_t commutes with Sigma, and the linear ODE carries x_eps to
x_t = a(t) mu + C_t^{1/2} C_eps^{-1/2} (x_eps - a(eps) mu).

Maths checks run in float64 (the `x64` fixture), where only solver tolerance and the three modelling
gaps named below remain; one test runs the float32 path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import closed_form
import likelihood
import sde_lib

# Monte-Carlo checks: |z| < 4.5 with fixed seeds (a fresh seed would fail by chance with
# probability about 1e-5 per comparison).
Z_MAX = 4.5

MEAN = np.array([0.3, -0.2, 0.25, 0.1])
_A = np.array(
  [[1.0, 0.3, 0.0, 0.2], [0.0, 0.7, -0.4, 0.0], [0.2, 0.0, 1.5, 0.1], [0.0, 0.1, 0.0, 0.4]]
)
COV = _A @ _A.T  # full and non-isotropic: eigenvalues from about 0.1 to 2.6


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def sdes():
  return {"vpsde": sde_lib.VPSDE(), "subvpsde": sde_lib.subVPSDE(), "vesde": sde_lib.VESDE()}


def gaussian_data(key, n, mean=MEAN, cov=COV):
  return jnp.asarray(mean) + jax.random.normal(key, (n, len(mean))) @ jnp.linalg.cholesky(cov).T


def sqrt_psd(m):
  w, u = np.linalg.eigh(m)
  return (u * np.sqrt(w)) @ u.T


# --- Divergence estimators ---------------------------------------------------------------------


def test_exact_divergence_is_the_jacobian_trace(x64):
  # An example-wise nonlinear map on image-shaped data [B, 2, 2, 1] (D = 4).
  w = jax.random.normal(jax.random.key(0), (4, 4))

  def fn(x):
    flat = x.reshape(x.shape[0], -1)
    return (jnp.tanh(flat) @ w.T + flat**2).reshape(x.shape)

  x = jax.random.normal(jax.random.key(1), (3, 2, 2, 1))
  fx, div = likelihood.divergence(fn, x, None)
  np.testing.assert_allclose(fx, fn(x), rtol=1e-14)
  jac = jax.vmap(jax.jacfwd(lambda xb: fn(xb[None])[0].ravel()))(x)  # [B, D, 2, 2, 1]
  expected = jnp.trace(jac.reshape(3, 4, 4), axis1=1, axis2=2)
  np.testing.assert_allclose(div, expected, rtol=1e-12)


@pytest.mark.parametrize("hutchinson_type", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased_with_its_known_variance(x64, hutchinson_type):
  # fn(x) = A x per example: v^T A v has mean tr(A) and variance sum_{i<j} (A_ij + A_ji)^2
  # (Rademacher) or 2 |(A + A^T) / 2|_F^2 (Gaussian). n = 100000 probes: the mean is checked by its
  # z-score; the sample variance of a quadratic form (kurtosis below 15 here) has a relative
  # standard error below sqrt(14 / n) = 1.2%, so 6% is a 5-sigma band.
  A = jax.random.normal(jax.random.key(2), (5, 5))
  n = 100_000
  x = jnp.ones((n, 5))
  probes = likelihood.DIVERGENCES.get(hutchinson_type)(jax.random.key(3), x.shape, x.dtype)
  _, div = likelihood.divergence(lambda x: x @ A.T, x, probes)
  sym = A + A.T
  if hutchinson_type == "rademacher":
    var = float(jnp.sum(jnp.triu(sym, 1) ** 2))
    np.testing.assert_array_equal(jnp.abs(probes), 1.0)
  else:
    var = float(2 * jnp.sum((sym / 2) ** 2))
  z = (jnp.mean(div) - jnp.trace(A)) / jnp.sqrt(var / n)
  assert abs(z) < Z_MAX, z
  assert abs(jnp.var(div) / var - 1) < 0.06, (jnp.var(div), var)


# --- The probability-flow log-likelihood of Gaussian data --------------------------------------


def closed_form_flow(sde, x, t_from, t_to, mean=MEAN, cov=COV):
  """The probability-flow map of N(mean, cov) data from t_from to t_to, per example x [B, D]."""
  (a0,), (s0,) = closed_form.mean_coeff_and_std(sde, jnp.array([t_from]))
  (a1,), (s1,) = closed_form.mean_coeff_and_std(sde, jnp.array([t_to]))
  c0 = float(a0) ** 2 * cov + float(s0) ** 2 * np.eye(len(mean))
  c1 = float(a1) ** 2 * cov + float(s1) ** 2 * np.eye(len(mean))
  m = sqrt_psd(c1) @ np.linalg.inv(sqrt_psd(c0))
  return float(a1) * mean + (np.asarray(x) - float(a0) * mean) @ m.T


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vpsde", "subvpsde", "vesde"])
def test_ode_log_likelihood_of_gaussian_data_is_exact(x64, name):
  # Exact score of N(MEAN, COV) in D = 4, exact divergence, the default tolerances (rtol = atol =
  # 1e-5, eps = 1e-5). The ODE result is log prior(z) + delta_logp; it differs from the data's
  # log p_0(x) by three gaps, each bounded here:
  #  1. the prior is not p_T: log p_T(z) - log prior(z) is about a(T) z.mu for VP (a(1) = 6.6e-3)
  #     and z.mu / sigma_max^2 for VE (z ~ sigma_max = 50), i.e. |mu| / 50 = 0.01 nats per example,
  #     the largest gap;
  #  2. eps truncation: log p_eps - log p_0 = O(std(eps)^2 tr(Sigma^{-1})) < 1e-5 nats;
  #  3. the solver: rtol = atol = 1e-5 on the (x, delta_logp) state, a few 1e-4 nats at most.
  # Their sum is well below the 1e-2 nats per dimension asked for (0.04 per example); measured:
  # at most 2.3e-3 per dimension (VE), 7e-4 (VP, sub-VP).
  sde = sdes()[name]
  score_fn = closed_form.gaussian_score_fn(sde, MEAN, COV)
  log_likelihood = jax.jit(likelihood.get_log_likelihood_fn(sde, score_fn, hutchinson_type="exact"))
  n, d, eps = 8, 4, 1e-5
  x = gaussian_data(jax.random.key(4), n)
  logp, z, nfe = log_likelihood(jax.random.key(5), None, x)
  logp0 = closed_form.gaussian_logp(sde, MEAN, COV, x, jnp.zeros(n))
  assert np.max(np.abs(logp - logp0)) / d < 1e-2, logp - logp0
  # Remove gap 1 exactly: what remains is log p_eps(x) up to the solver, 3e-4 nats (measured: at
  # most 1.4e-4 over the three SDEs).
  logp_eps = closed_form.gaussian_logp(sde, MEAN, COV, x, jnp.full((n,), eps))
  prior_gap = closed_form.gaussian_logp(sde, MEAN, COV, z, jnp.ones(n)) - sde.prior_logp(z)
  np.testing.assert_allclose(logp + prior_gap, logp_eps, rtol=0, atol=3e-4)
  # The latent code is the closed-form flow map (relative error at the solver's tolerance).
  z_exact = closed_form_flow(sde, x, eps, sde.T)
  np.testing.assert_allclose(z, z_exact, rtol=0, atol=1e-4 * np.max(np.abs(z_exact)))
  assert nfe > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vpsde", "vesde"])
def test_ode_log_likelihood_tightens_with_the_tolerance(x64, name):
  # With rtol = atol = 1e-9 the only difference left between log prior(z) + delta_logp + gap 1 and
  # log p_eps(x) is the solver's: below 1e-7 nats (measured 1e-9 for VP, 6e-9 for VE). This shows
  # that the error against log p_0 above is the modelling gaps, not the integration.
  sde = sdes()[name]
  score_fn = closed_form.gaussian_score_fn(sde, MEAN, COV)
  log_likelihood = jax.jit(
    likelihood.get_log_likelihood_fn(
      sde, score_fn, hutchinson_type="exact", rtol=1e-9, atol=1e-9, max_steps=20_000
    )
  )
  n, eps = 4, 1e-5
  x = gaussian_data(jax.random.key(6), n)
  logp, z, _ = log_likelihood(jax.random.key(7), None, x)
  logp_eps = closed_form.gaussian_logp(sde, MEAN, COV, x, jnp.full((n,), eps))
  prior_gap = closed_form.gaussian_logp(sde, MEAN, COV, z, jnp.ones(n)) - sde.prior_logp(z)
  np.testing.assert_allclose(logp + prior_gap, logp_eps, rtol=0, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("hutchinson_type", ["rademacher", "gaussian"])
def test_ode_hutchinson_log_likelihood_is_unbiased(x64, hutchinson_type):
  # The ODE path of x does not depend on the probe, so delta_logp = v^T (int J dt) v: each copy of the
  # same x, with its own probe, is an independent unbiased estimate of the exact-trace value. Mean
  # over 128 copies of each of 2 points, z-score with the copies' sample standard deviation (the
  # solver's error, about 1e-4 nats, is far below the standard error, about 0.07 nats for Rademacher
  # and 0.1 for Gaussian probes).
  sde = sde_lib.VPSDE()
  score_fn = closed_form.gaussian_score_fn(sde, MEAN, COV)
  x = gaussian_data(jax.random.key(8), 2)
  copies = jnp.repeat(x, 128, axis=0)
  estimate = jax.jit(
    likelihood.get_log_likelihood_fn(sde, score_fn, hutchinson_type=hutchinson_type)
  )
  exact = jax.jit(likelihood.get_log_likelihood_fn(sde, score_fn, hutchinson_type="exact"))
  logp_exact = exact(jax.random.key(9), None, x)[0]
  key = jax.random.key(10 if hutchinson_type == "rademacher" else 11)
  logp = estimate(key, None, copies)[0].reshape(2, 128)
  std = jnp.std(logp, axis=1, ddof=1)
  assert np.all(std > 1e-3)  # the estimates do vary: each copy has its own probe
  z = (jnp.mean(logp, axis=1) - logp_exact) / (std / np.sqrt(128))
  assert np.all(np.abs(z) < Z_MAX), z


# --- NFE, jit and float32 ----------------------------------------------------------------------


@pytest.mark.parametrize(
  "solver,hutchinson_type",
  [
    ("dopri5", "rademacher"),
    pytest.param("heun", "exact", marks=pytest.mark.slow),
    pytest.param("bosh3", "gaussian", marks=pytest.mark.slow),
  ],
)
def test_nfe_counts_the_drift_evaluations(solver, hutchinson_type):
  # Count the score evaluations the compiled solve actually makes (a debug callback runs once per
  # evaluation and example) and compare with the reported NFE. Heun is not first-same-as-last.
  count = [0]

  def counter(_):
    count[0] += 1

  sde = sde_lib.VPSDE()
  exact_score = closed_form.gaussian_score_fn(sde, MEAN[:2], COV[:2, :2])

  def score_fn(params, x, t, *, train=False, rng=None):
    jax.debug.callback(counter, t)
    return exact_score(params, x, t)

  fn = jax.jit(
    likelihood.get_log_likelihood_fn(
      sde, score_fn, hutchinson_type=hutchinson_type, solver=solver, rtol=1e-3, atol=1e-3
    )
  )
  x = gaussian_data(jax.random.key(11), 3, MEAN[:2], COV[:2, :2]).astype(jnp.float32)
  logp, z, nfe = fn(jax.random.key(12), None, x)
  jax.block_until_ready(logp)
  assert int(nfe) > 0
  assert count[0] == 3 * int(nfe), (count[0], int(nfe))  # vmapped: one call per example


def test_log_likelihood_in_float32_under_jit():
  # The float32 path as run on real data: jitted, shapes and dtypes kept, close to the exact value.
  # Tolerance: 2e-2 nats per dimension, the float64 bound above plus float32 round-off in the solve.
  sde = sde_lib.VPSDE()
  mean, cov = MEAN[:2].astype(np.float32), COV[:2, :2].astype(np.float32)
  score_fn = closed_form.gaussian_score_fn(sde, mean, cov)
  fn = jax.jit(likelihood.get_log_likelihood_fn(sde, score_fn, hutchinson_type="exact"))
  x = gaussian_data(jax.random.key(13), 16, mean, cov).astype(jnp.float32)
  logp, z, nfe = fn(jax.random.key(14), None, x)
  assert logp.shape == (16,) and z.shape == x.shape
  assert logp.dtype == jnp.float32 and z.dtype == jnp.float32
  assert nfe.dtype == jnp.int32 and int(nfe) > 0
  with jax.enable_x64(True):
    exact = np.asarray(
      closed_form.gaussian_logp(
        sde, MEAN[:2], COV[:2, :2], jnp.asarray(x, jnp.float64), jnp.zeros(16)
      )
    )
  error = np.max(np.abs(np.asarray(logp, np.float64) - exact)) / 2
  assert error < 2e-2, error


# --- Bits per dimension ------------------------------------------------------------------------


def test_bits_per_dim_offset_hand_computed():
  # A model uniform on the data range spends exactly 8 bits on each 8-bit value, whichever scaling:
  # uniform on [0, 1]^D has logp = 0; uniform on [-1, 1]^D has logp = -D log 2.
  D = 12
  identity = lambda x: x
  centered = lambda x: (x + 1.0) / 2.0
  np.testing.assert_allclose(likelihood.bits_per_dim(jnp.zeros(3), D), 8.0)
  np.testing.assert_allclose(likelihood.bits_per_dim(jnp.zeros(3), D, identity), 8.0)
  uniform_centered = jnp.full((3,), -D * np.log(2.0))
  np.testing.assert_allclose(likelihood.bits_per_dim(uniform_centered, D, centered), 8.0, rtol=1e-6)
  # In general bpd = -logp / (D ln 2) + offset with the reference's offset log2(inverse_scaler'(0))
  # + 8: 7 for centered data, 8 for [0, 1] data.
  logp = jnp.array([-3.0, 10.0, 25.0])
  for scaler, offset in ((identity, 8.0), (centered, 7.0)):
    assert np.log2(jax.grad(scaler)(0.0)) + 8.0 == offset
    expected = -np.asarray(logp) / (D * np.log(2.0)) + offset
    np.testing.assert_allclose(likelihood.bits_per_dim(logp, D, scaler), expected, rtol=1e-6)


@pytest.mark.slow
def test_dequantised_bits_per_dim_match_the_discrete_probability(x64):
  # Three 8-bit pixels k, centered data (the model sees x = 2 y - 1). The data model in [0, 1] is
  # N(0.5, 0.1^2) per pixel, i.e. N(0, 0.2^2) in model space, with its exact score under VP. The
  # probability of pixel k is P(k) = Phi((k + 1) / 256) - Phi(k / 256), so the bits/dim of the 8-bit
  # image are -sum_i log2 P(k_i) / 3. The ODE's dequantised estimate averages
  # -log2(p((k + u) / 256) / 256): it is above that by a Jensen gap below 1e-4 bits (log p varies by
  # at most 0.06 nats over a bin), and its Monte-Carlo error over 64 copies is about 2e-3 bits; the
  # ODE and modelling gaps are below 1e-4 here (measured difference: 6e-4 bits). Tolerance 1e-2
  # bits/dim. A wrong offset would be off by 1 bit, and dequantising as y + u / 256 instead of
  # (255 y + u) / 256 by 0.06 bits (measured).
  sde = sde_lib.VPSDE()
  score_fn = closed_form.gaussian_score_fn(sde, np.zeros(3), 0.04 * np.eye(3))
  pixels = np.array([30, 128, 230])
  y = pixels / 255.0  # what an 8-bit image loader yields
  x = jnp.broadcast_to(jnp.asarray(2.0 * y - 1.0).reshape(1, 1, 1, 3), (64, 1, 1, 3))
  fn = jax.jit(
    likelihood.get_likelihood_fn(
      sde, score_fn, lambda x: (x + 1.0) / 2.0, hutchinson_type="exact", dequantize=True
    )
  )
  bpd, z, nfe = fn(jax.random.key(15), None, x)
  assert bpd.shape == (64,) and z.shape == x.shape and int(nfe) > 0
  assert np.std(np.asarray(bpd)) > 0  # each copy has its own dequantisation noise
  p_bins = stats.norm.cdf((pixels + 1) / 256, 0.5, 0.1) - stats.norm.cdf(pixels / 256, 0.5, 0.1)
  expected = -np.sum(np.log2(p_bins)) / 3
  assert abs(float(jnp.mean(bpd)) - expected) < 1e-2, (float(jnp.mean(bpd)), expected)


# --- Bad input ---------------------------------------------------------------------------------


def test_bad_arguments_name_the_field_and_the_choices():
  sde = sde_lib.VPSDE()
  score_fn = closed_form.gaussian_score_fn(sde, MEAN, COV)
  with pytest.raises(ValueError, match="config.eval.hutchinson_type") as info:
    likelihood.get_likelihood_fn(sde, score_fn, hutchinson_type="bernoulli")
  for choice in ("exact", "gaussian", "rademacher"):
    assert choice in str(info.value)
  # Case-insensitive, as the reference spells them ("Rademacher", "Gaussian").
  likelihood.get_likelihood_fn(sde, score_fn, hutchinson_type="Rademacher")
  for eps in (0.0, -1e-3, 1.0, 2.0):
    with pytest.raises(ValueError, match=r"eps of the likelihood.*\(0, T=1"):
      likelihood.get_log_likelihood_fn(sde, score_fn, eps=eps)
  with pytest.raises(ValueError, match="config.sampling.ode_solver.*dopri5"):
    likelihood.get_log_likelihood_fn(sde, score_fn, solver="rk45")
  with pytest.raises(ValueError, match="affine inverse data scaler"):
    likelihood.get_likelihood_fn(sde, score_fn, lambda x: x**2)
