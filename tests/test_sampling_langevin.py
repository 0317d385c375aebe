"""Langevin dynamics and annealed Langevin dynamics (Song & Ermon 2019, Eq. 4 and Alg. 1).

Exact facts used:
- Langevin dynamics x' = x + (e/2) score(x) + sqrt(e) z on N(mu, Sigma) (the unadjusted Langevin
  algorithm) is a linear-Gaussian chain whose stationary law is N(mu, C) with, in the eigenbasis of
  Sigma, C = Sigma (I - e Sigma^-1 / 4)^-1: solve C = B C B + e I with B = I - e Sigma^-1 / 2.
- On a mixture of well-separated modes, plain Langevin dynamics does not cross between modes in
  any practical time, so the mode weights it produces are those of its initial points; annealed
  Langevin dynamics recovers the mixture weights (NCSN, Sec. 3.2 and Fig. 3: 0.2 N((-5,-5), I) +
  0.8 N((5,5), I), uniform initial points).

Float64 throughout (the `x64` fixture).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import closed_form
import sampling
import sde_lib

Z_MAX = 4.5  # see tests/test_sampling_gaussian.py

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


class NoiseLevel:
  """A perturbation kernel x_sigma = x0 + sigma z, for closed_form scores of data at level sigma."""

  def marginal_prob(self, x0, sigma):
    return x0, sigma


def test_langevin_dynamics_reaches_its_exact_stationary_gaussian():
  n, step_size, n_steps = 4000, 0.05, 1000
  score_fn = closed_form.gaussian_score_fn(NoiseLevel(), MU, COV)
  score = lambda x: score_fn(None, x, jnp.zeros(x.shape[0]))
  x0 = 2.0 * jax.random.normal(jax.random.key(0), (n, 2))
  run = jax.jit(
    lambda x: sampling.langevin_dynamics(jax.random.key(1), score, x, step_size, n_steps)
  )
  x = np.asarray(run(x0))
  lam, V = np.linalg.eigh(COV)
  stationary = V @ np.diag(lam / (1 - step_size / (4 * lam))) @ V.T
  # Slowest contraction per step: 1 - e / (2 lambda_max) = 0.982; 0.982^1000 = 1e-8: converged.
  se_mean = np.sqrt(np.diag(stationary) / n)
  se_cov = np.sqrt((np.outer(np.diag(stationary), np.diag(stationary)) + stationary**2) / n)
  assert np.all(np.abs(x.mean(0) - MU) <= Z_MAX * se_mean)
  assert np.all(np.abs(np.cov(x, rowvar=False) - stationary) <= Z_MAX * se_cov)
  # The step's bias is resolved: the variance along the narrow direction (lambda = 0.10) is 14%
  # larger than Sigma's, well over Z_MAX standard errors.
  narrow = V[:, 0]
  var_narrow = narrow @ np.cov(x, rowvar=False) @ narrow
  assert var_narrow - lam[0] > Z_MAX * lam[0] * np.sqrt(2 / n)


def test_annealed_langevin_recovers_mixture_weights_that_plain_langevin_cannot():
  n = 4000
  weights = jnp.array([0.2, 0.8])
  means = jnp.array([[-5.0, -5.0], [5.0, 5.0]])
  score_fn = closed_form.gaussian_mixture_score_fn(
    NoiseLevel(), weights, means, jnp.stack([jnp.eye(2)] * 2)
  )
  score = lambda x, sigma: score_fn(None, x, sigma)
  x0 = jax.random.uniform(jax.random.key(0), (n, 2), minval=-8.0, maxval=8.0)

  # The modes are 14 apart with unit spread: a point's mode is the side of the line x + y = 0.
  def weight_of_first_mode(x):
    return float(np.mean(np.asarray(x).sum(1) < 0))

  plain = jax.jit(
    lambda x: sampling.langevin_dynamics(
      jax.random.key(1), lambda y: score(y, jnp.zeros(n)), x, 0.1, 500
    )
  )(x0)
  # NCSN's toy schedule: 10 geometric levels from 20 to 1, 100 steps each, step_lr 0.1.
  sigmas = jnp.geomspace(20.0, 1.0, 10)
  annealed = jax.jit(
    lambda x: sampling.annealed_langevin_dynamics(jax.random.key(1), score, x, sigmas, 0.1, 100)
  )(x0)

  w_plain, w_annealed = weight_of_first_mode(plain), weight_of_first_mode(annealed)
  # Plain Langevin keeps the split of its initial points: no point crosses the 14-wide gap once
  # in a mode; only points started near the line x + y = 0 go either way (net change measured
  # 0.8%, allow 2%)...
  assert abs(w_plain - weight_of_first_mode(x0)) < 0.02
  assert abs(w_plain - 0.2) > 0.25
  # ... annealed Langevin finds the true weight 0.2. It is a little high (0.22 at n = 10^4, about
  # 5 standard errors): 100 steps per level do not quite equilibrate where the modes separate.
  assert abs(w_annealed - 0.2) < 0.04
  # Within each mode, the last level's law: N(mean, (1 + sigma_L^2) I) = N(mean, 2 I).
  first = np.asarray(annealed)[np.asarray(annealed).sum(1) < 0]
  se = np.sqrt(2.0 / first.shape[0])
  assert np.all(np.abs(first.mean(0) - np.array([-5.0, -5.0])) <= Z_MAX * se)


def test_annealed_langevin_noise_removal_is_tweedie_denoising():
  # On Gaussian data N(mu, s^2 I) perturbed at sigma, x + sigma^2 score(x, sigma) is E[x0 | x]:
  # the mean of the denoised points is mu and their variance s^4 / (s^2 + sigma^2) per coordinate.
  n, s2 = 4000, 0.25
  mean = np.array([2.0, -1.0])
  score_fn = closed_form.gaussian_score_fn(NoiseLevel(), mean, s2 * np.eye(2))
  score = lambda x, sigma: score_fn(None, x, sigma)
  sigmas = jnp.array([2.0, 1.0, 0.5])
  x0 = jax.random.normal(jax.random.key(0), (n, 2))
  x = jax.jit(
    lambda x: sampling.annealed_langevin_dynamics(
      jax.random.key(1), score, x, sigmas, 0.02, 200, noise_removal=True
    )
  )(x0)
  x = np.asarray(x)
  # Step 0.02 at the last level: the chain's own variance is larger by 1 / (1 - e / (4 * 0.5)),
  # 1.0%; allow 1.5%. (Contraction per step >= 0.02, 200 steps per level: converged.)
  var = s2**2 / (s2 + 0.25)
  assert np.all(np.abs(x.mean(0) - mean) <= Z_MAX * np.sqrt(var / n))
  assert np.all(np.abs(x.var(0) - var) <= Z_MAX * var * np.sqrt(2 / n) + 0.015 * var)


def test_langevin_draws_are_per_example():
  score = lambda x: -x
  x0 = jnp.zeros((6, 3))
  run = jax.jit(sampling.langevin_dynamics, static_argnums=(1, 3, 4))
  whole = run(jax.random.key(4), score, x0, 0.1, 5)
  tail = run(jax.random.key(4), score, x0[2:], 0.1, 5, 2)
  np.testing.assert_allclose(tail, whole[2:], rtol=1e-13, atol=1e-15)


def test_per_example_langevin_step_sizes_bias_the_stationary_law():
  # Langevin steps with e(x) = 2 (r ||z|| / ||score(x)||)^2 leave p / e ~ p ||score||^2 invariant
  # (the PerExampleLangevinCorrector docstring): for N(0, I_D), E||x||^2 = D + 2 instead of D in
  # the small-step limit; the discrete chain's rare huge steps (small ||x||) add more (12.5
  # measured for D = 8).
  # The batch-averaged step of LangevinCorrector keeps E||x||^2 = D. D = 8, r = 0.1: steps ~0.02,
  # whose own bias is 1 / (1 - e / 4) = +0.5%; 2000 steps, 50 per unit of Langevin time: converged.
  n, d, n_steps = 2000, 8, 2000
  sde = sde_lib.VESDE()  # only its langevin_alpha (1) is used
  score = lambda x, t: -x
  x0 = jax.random.normal(jax.random.key(0), (n, d))
  keys = sampling.example_keys(jax.random.key(1), n)
  t = jnp.full((n,), 0.5)
  results = {}
  for corrector in (sampling.LangevinCorrector, sampling.PerExampleLangevinCorrector):
    update = corrector(sde, score, 0.1, n_steps).update
    x, _ = jax.jit(update)(keys, x0, t)
    results[corrector] = np.sum(np.asarray(x) ** 2, axis=1)
  # ||x||^2 ~ chi^2_D under N(0, I): standard error sqrt(2 D / n) = 0.09; allow 0.5% for the step.
  se = np.sqrt(2 * d / n)
  assert abs(results[sampling.LangevinCorrector].mean() - d) <= Z_MAX * se + 0.005 * d
  assert results[sampling.PerExampleLangevinCorrector].mean() - d > 1.5  # > 10 se
