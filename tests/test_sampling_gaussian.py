"""Samplers against closed form: Gaussian data N(mu, Sigma) and a Gaussian mixture in 2-D.

With the exact score (closed_form), every sampler's output distribution is known:
- the probability-flow ODE of Gaussian data is the affine map x_t = a_t mu + M_st (x_s - a_s mu),
  M_st = Sigma_t^(1/2) Sigma_s^(-1/2), Sigma_t = a_t^2 Sigma + std_t^2 I (the Sigma_t commute);
- the PC samplers with affine steps (Euler-Maruyama, reverse diffusion, ancestral, and the ALD
  corrector, whose step does not depend on x) are linear-Gaussian chains, whose output mean and
  covariance `chain_moments` propagates exactly step by step, using the samplers' own updates.
Monte-Carlo checks then compare sample statistics with those exact values in units of their
standard errors, and the discretisation bias (exact chain moments minus data moments) is checked
separately and deterministically.

Song et al. 2021 (arXiv:2011.13456): Alg. 1-5, Eq. 13. Everything runs in float64 (the `x64`
fixture); SDEs are built inside it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import closed_form
import sampling
import sde_lib

# Monte-Carlo statistics must lie within Z_MAX standard errors of their exact values. Seeds are
# fixed, so the tests are deterministic; with about 200 comparisons over these files, |z| < 4.5
# would fail by chance with probability < 200 * 7e-6 = 1.4e-3 for fresh seeds.
Z_MAX = 4.5
N_SAMPLES = 10_000
EPS = 1e-3

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])  # eigenvalues 1.40 and 0.10: non-isotropic

# Mixture: weights and means chosen so that the mixture mean is zero (so the prior N(0, sigma_max^2)
# of VE has the mean of p_T), components well separated relative to their spread.
WEIGHTS = np.array([0.2, 0.3, 0.5])
MEANS = np.array([[-5.0, 3.0], [5.0, 2.0], [-1.0, -2.4]])
COVS = np.array([[[0.6, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.5]], [[0.5, 0.0], [0.0, 0.8]]])


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def make_sde(name: str) -> sde_lib.SDE:
  return {"vpsde": sde_lib.VPSDE, "subvpsde": sde_lib.subVPSDE, "vesde": sde_lib.VESDE}[name]()


def identity(x):
  return x


# --- Exact answers. ------------------------------------------------------------------------------


def marginal_cov(sde, t: float) -> tuple[float, np.ndarray]:
  """a(t) and Sigma_t = a^2 Sigma + std^2 I of Gaussian data under `sde`."""
  a, std = closed_form.mean_coeff_and_std(sde, jnp.array([t]))
  a, std = float(a[0]), float(std[0])
  return a, a**2 * COV + std**2 * np.eye(2)


def exact_flow(sde, x: np.ndarray, s: float, t: float) -> np.ndarray:
  """The probability-flow map from time s to time t for Gaussian data, applied to x [B, 2]."""
  a_s, cov_s = marginal_cov(sde, s)
  a_t, cov_t = marginal_cov(sde, t)
  lam, V = np.linalg.eigh(COV)
  ratio = (a_t**2 * lam + (cov_t - a_t**2 * COV)[0, 0]) / (
    a_s**2 * lam + (cov_s - a_s**2 * COV)[0, 0]
  )
  M = V @ np.diag(np.sqrt(ratio)) @ V.T
  return a_t * MU + (x - a_s * MU) @ M.T


def prior_var(sde) -> float:
  """Variance v of each coordinate of the prior N(0, v I), read off log p_T(0) = -log(2 pi v)."""
  return float(np.exp(-sde.prior_logp(jnp.zeros((1, 2)))[0]) / (2 * np.pi))


def chain_moments(sde, score, predictor, corrector, snr):
  """Exact mean [2] and covariance [2, 2] of a PC sampler's output (noise removal on), for affine
  updates x_new = A x + b + std z (per-example scalar std): propagated through the N steps with the
  sampler's own update functions, applied to the points 0, e_1, e_2 to read off A and b."""
  x = jnp.concatenate([jnp.zeros((1, 2)), jnp.eye(2)])
  keys = sampling.example_keys(jax.random.key(0), 3)
  predictor = predictor(sde, score, False)
  corrector = corrector(sde, score, snr, 1)

  def propagate(update, noise, t, mean, cov):
    x_new, x_mean = update(keys, x, jnp.full((3,), t))
    b = x_mean[0]
    A = (x_mean[1:] - b).T
    # The noise of every example is std * z, z drawn as the update draws it: read std off it.
    std = ((x_new - x_mean) / noise)[0, 0]
    return A @ mean + b, A @ cov @ A.T, std**2 * jnp.eye(2)

  def step(carry, t):
    mean, cov = carry
    if not isinstance(corrector, sampling.NoneCorrector):
      # One ALD step draws normal(fold_in(key, 0), x).
      noise = sampling.normal(sampling.fold_in(keys, 0), x)
      mean, cov, noise_cov = propagate(corrector.update, noise, t, mean, cov)
      cov = cov + noise_cov
    mean, cov_mean, noise_cov = propagate(predictor.update, sampling.normal(keys, x), t, mean, cov)
    return (mean, cov_mean + noise_cov), (mean, cov_mean)

  times = sampling.linear_timesteps(sde.T, EPS, sde.N, jnp.float64)
  start = (jnp.zeros(2), prior_var(sde) * jnp.eye(2))
  _, (means, covs_mean) = jax.lax.scan(step, start, times)
  return np.asarray(means[-1]), np.asarray(covs_mean[-1])


def check_moments(x: np.ndarray, mean: np.ndarray, cov: np.ndarray, allowance: float = 0.0):
  """Sample mean and covariance of x [n, 2] within Z_MAX standard errors (+ `allowance`) of the
  Gaussian's `mean`, `cov`. Var of a sample covariance entry: (S_ii S_jj + S_ij^2) / n."""
  n = x.shape[0]
  d_mean = np.abs(x.mean(0) - mean)
  d_cov = np.abs(np.cov(x, rowvar=False) - cov)
  se_mean = np.sqrt(np.diag(cov) / n)
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
  assert np.all(d_mean <= Z_MAX * se_mean + allowance), (d_mean, se_mean)
  assert np.all(d_cov <= Z_MAX * se_cov + allowance), (d_cov, se_cov)


# --- Probability-flow ODE: exact. -----------------------------------------------------------------


@pytest.mark.parametrize(
  "sde_name", ["vpsde", pytest.param("subvpsde", marks=pytest.mark.slow), "vesde"]
)
def test_ode_flow_is_the_exact_affine_map_and_round_trips(sde_name):
  sde = make_sde(sde_name)
  score = functools.partial(closed_form.gaussian_score_fn(sde, MU, COV), None)
  x0 = MU + np.random.default_rng(0).normal(size=(6, 2)) @ np.linalg.cholesky(COV).T * 2.0
  options = dict(rtol=1e-10, atol=1e-10, max_steps=20_000)
  z, nfe_forward = jax.jit(lambda x: sampling.data_to_prior(sde, score, x, EPS, **options))(x0)
  # dopri5 with tolerances 1e-10 leaves a global error of a few 1e-9 relative to the prior scale.
  scale = np.sqrt(prior_var(sde))
  np.testing.assert_allclose(z, exact_flow(sde, x0, EPS, sde.T), rtol=0, atol=1e-7 * scale)
  x_back, nfe_back = jax.jit(lambda z: sampling.prior_to_data(sde, score, z, EPS, **options))(z)
  np.testing.assert_allclose(x_back, x0, rtol=0, atol=1e-6)
  assert int(nfe_forward) > 0 and int(nfe_back) > 0


def test_ode_sampler_is_deterministic_given_the_prior_sample():
  sde = make_sde("vpsde")
  score_fn = closed_form.gaussian_score_fn(sde, MU, COV)
  sample = jax.jit(sampling.get_ode_sampler(sde, score_fn, (8, 2), identity, eps=EPS))
  x1, nfe1 = sample(jax.random.key(3), None)
  x2, nfe2 = sample(jax.random.key(3), None)
  np.testing.assert_array_equal(x1, x2)
  assert int(nfe1) == int(nfe2) > 0
  # ... and it is prior_to_data of its prior sample, which maps through the exact flow.
  keys = sampling.split(sampling.example_keys(jax.random.key(3), 8))[0]
  z = sampling.prior_sample(sde, keys, (8, 2))
  x3, _ = sampling.prior_to_data(sde, functools.partial(score_fn, None), z, EPS)
  np.testing.assert_array_equal(x1, x3)
  # rtol = atol = 1e-5 (the default) bound the local error; the global error measured here is up
  # to 1e-3 (prior samples in the tails), far below the data's spread.
  np.testing.assert_allclose(x1, exact_flow(sde, np.asarray(z), sde.T, EPS), atol=3e-3)


@pytest.mark.parametrize(
  "sde_name",
  [
    pytest.param("vpsde", marks=pytest.mark.slow),
    pytest.param("subvpsde", marks=pytest.mark.slow),
    "vesde",
  ],
)
def test_ode_sampler_matches_the_gaussian(sde_name):
  sde = make_sde(sde_name)
  score_fn = closed_form.gaussian_score_fn(sde, MU, COV)
  sample = sampling.get_ode_sampler(sde, score_fn, (N_SAMPLES, 2), identity, eps=EPS)
  x, nfe = jax.jit(sample)(jax.random.key(1), None)
  assert 0 < int(nfe) < 1000
  # The exact output law: the prior N(0, v I) pushed through the exact flow from T to eps. It
  # differs from the data by the prior mismatch (p_T is not exactly the prior) and by eps:
  M = exact_flow(sde, np.eye(2), sde.T, EPS) - exact_flow(sde, np.zeros((1, 2)), sde.T, EPS)
  mean = exact_flow(sde, np.zeros((1, 2)), sde.T, EPS)[0]
  cov = prior_var(sde) * M.T @ M
  check_moments(np.asarray(x), mean, cov)
  # ... both far below the Monte-Carlo error: the ODE sampler samples the data distribution.
  check_moments(np.asarray(x), MU, COV, allowance=0.01)


# --- PC samplers. --------------------------------------------------------------------------------

AFFINE_PAIRS = [
  ("vpsde", "euler_maruyama", "none"),
  ("vpsde", "reverse_diffusion", "none"),
  ("vpsde", "ancestral_sampling", "none"),
  ("vpsde", "euler_maruyama", "ald"),
  ("subvpsde", "euler_maruyama", "none"),
  ("subvpsde", "reverse_diffusion", "none"),
  ("subvpsde", "euler_maruyama", "ald"),
  ("vesde", "euler_maruyama", "none"),
  ("vesde", "reverse_diffusion", "none"),
  ("vesde", "ancestral_sampling", "none"),
  ("vesde", "euler_maruyama", "ald"),
]
SNR = 0.16  # the paper's snr for VE (Song et al. 2021, App. G)


@pytest.mark.parametrize(("sde_name", "predictor", "corrector"), AFFINE_PAIRS)
def test_discretisation_bias_of_the_pc_samplers_is_small(sde_name, predictor, corrector):
  # Exact output moments of the discretised chain (N = 1000, eps = 1e-3) against the data: no
  # Monte-Carlo error. The largest, 0.015 in the variances, is reverse diffusion on VE (SMLD's
  # discretisation); the rest are below 0.004.
  sde = make_sde(sde_name)
  score = functools.partial(closed_form.gaussian_score_fn(sde, MU, COV), None)
  mean, cov = chain_moments(
    sde, score, sampling.PREDICTORS.get(predictor), sampling.CORRECTORS.get(corrector), SNR
  )
  np.testing.assert_allclose(mean, MU, atol=2e-3)
  np.testing.assert_allclose(cov, COV, atol=0.02)


def test_corrector_only_ald_with_one_step_per_level_is_biased():
  # A fact the chain moments make exact: one ALD step per noise level (snr 0.16) does not let
  # x reach p_t on VP (the mean is off by ~0.1, 70 standard errors at n = 10^4); C-only sampling
  # needs more corrector steps or a larger snr (see the Langevin corrector-only test).
  sde = make_sde("vpsde")
  score = functools.partial(closed_form.gaussian_score_fn(sde, MU, COV), None)
  mean, _ = chain_moments(
    sde, score, sampling.NonePredictor, sampling.AnnealedLangevinCorrector, SNR
  )
  assert np.abs(mean - MU).max() > 0.05


def pc_samples(sde, predictor, corrector, snr, score_fn, n=N_SAMPLES, seed=1):
  sample = sampling.get_pc_sampler(
    sde,
    score_fn,
    (n, 2),
    sampling.PREDICTORS.get(predictor),
    sampling.CORRECTORS.get(corrector),
    identity,
    snr=snr,
    eps=EPS,
  )
  x, nfe = jax.jit(sample)(jax.random.key(seed), None)
  return np.asarray(x), int(nfe)


def test_pc_sampler_matches_its_exact_chain_moments():
  # The default-run representative of the slow matrix below, on a shorter chain (N = 200): the
  # comparison is with the chain's own exact law, whatever its discretisation bias.
  sde = sde_lib.VPSDE(N=200)
  score_fn = closed_form.gaussian_score_fn(sde, MU, COV)
  x, nfe = pc_samples(sde, "reverse_diffusion", "none", SNR, score_fn)
  mean, cov = chain_moments(
    sde,
    functools.partial(score_fn, None),
    sampling.ReverseDiffusionPredictor,
    sampling.NoneCorrector,
    SNR,
  )
  check_moments(x, mean, cov)
  assert nfe == sde.N


@pytest.mark.slow
@pytest.mark.parametrize(("sde_name", "predictor", "corrector"), AFFINE_PAIRS)
def test_affine_pc_samplers_match_the_gaussian(sde_name, predictor, corrector):
  sde = make_sde(sde_name)
  score_fn = closed_form.gaussian_score_fn(sde, MU, COV)
  x, _ = pc_samples(sde, predictor, corrector, SNR, score_fn)
  mean, cov = chain_moments(
    sde,
    functools.partial(score_fn, None),
    sampling.PREDICTORS.get(predictor),
    sampling.CORRECTORS.get(corrector),
    SNR,
  )
  # Against the exact law of the chain: nothing but Monte-Carlo error.
  check_moments(x, mean, cov)
  # Against the data: plus the discretisation bias bounded in the test above.
  check_moments(x, MU, COV, allowance=0.02)


@pytest.mark.slow
@pytest.mark.parametrize(
  ("sde_name", "predictor", "corrector", "snr"),
  [
    ("vpsde", "reverse_diffusion", "langevin", 0.16),
    ("subvpsde", "reverse_diffusion", "langevin", 0.16),
    ("vesde", "reverse_diffusion", "langevin", 0.16),
    # Corrector-only: one Langevin step per level needs a larger snr than PC sampling does.
    ("vpsde", "none", "langevin", 0.3),
    ("vesde", "none", "langevin", 0.3),
  ],
)
def test_pc_samplers_with_the_langevin_corrector_match_the_gaussian(
  sde_name, predictor, corrector, snr
):
  # The Langevin corrector's step depends on the batch through its norms: not an affine chain.
  # Allowance 0.02: the predictor's exact discretisation bias (< 0.015, above) plus a corrector
  # bias O(step) that runs at n = 2 10^4 did not resolve (< 0.01, one standard error).
  sde = make_sde(sde_name)
  score_fn = closed_form.gaussian_score_fn(sde, MU, COV)
  x, nfe = pc_samples(sde, predictor, corrector, snr, score_fn)
  check_moments(x, MU, COV, allowance=0.02)
  assert nfe == sde.N * (2 if predictor != "none" else 1)


# --- Gaussian mixture. ---------------------------------------------------------------------------


def assign(x: np.ndarray) -> np.ndarray:
  """The most probable mixture component of each point [n] (posterior under the data mixture)."""
  logp = np.stack(
    [
      np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
      for w, m, c in zip(WEIGHTS, MEANS, COVS, strict=True)
    ],
    axis=1,
  )
  return np.argmax(logp, axis=1)


@functools.cache
def mixture_reference(n: int = 400_000):
  """Assignment fractions [K], per-component means [K, 2] and variances [K, 2] of an exact sample."""
  rng = np.random.default_rng(0)
  k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
  chol = np.linalg.cholesky(COVS)
  x = MEANS[k] + np.einsum("nij,nj->ni", chol[k], rng.normal(size=(n, 2)))
  labels = assign(x)
  fractions = np.bincount(labels, minlength=len(WEIGHTS)) / n
  means = np.stack([x[labels == j].mean(0) for j in range(len(WEIGHTS))])
  variances = np.stack([x[labels == j].var(0) for j in range(len(WEIGHTS))])
  return n, fractions, means, variances


def check_mixture(x: np.ndarray):
  """Assigned fractions and per-component means of x within Z_MAX standard errors of an exact
  sample's (the assignment's own overlap errors are the same for both, so they cancel)."""
  n_ref, fractions_ref, means_ref, variances_ref = mixture_reference()
  n = x.shape[0]
  labels = assign(x)
  fractions = np.bincount(labels, minlength=len(WEIGHTS)) / n
  se = np.sqrt(fractions_ref * (1 - fractions_ref) * (1 / n + 1 / n_ref))
  assert np.all(np.abs(fractions - fractions_ref) <= Z_MAX * se), (fractions, fractions_ref, se)
  np.testing.assert_allclose(fractions_ref, WEIGHTS, atol=0.003)  # components barely overlap
  for j in range(len(WEIGHTS)):
    n_j = np.sum(labels == j)
    se = np.sqrt(variances_ref[j] * (1 / n_j + 1 / (fractions_ref[j] * n_ref)))
    d = np.abs(x[labels == j].mean(0) - means_ref[j])
    assert np.all(d <= Z_MAX * se), (j, d, se)


@pytest.mark.parametrize(
  "sde_name",
  [
    pytest.param("vpsde", marks=pytest.mark.slow),
    pytest.param("subvpsde", marks=pytest.mark.slow),
    "vesde",
  ],
)
def test_ode_sampler_matches_the_mixture(sde_name):
  sde = make_sde(sde_name)
  score_fn = closed_form.gaussian_mixture_score_fn(sde, WEIGHTS, MEANS, COVS)
  sample = sampling.get_ode_sampler(sde, score_fn, (N_SAMPLES, 2), identity, eps=EPS)
  x, nfe = jax.jit(sample)(jax.random.key(2), None)
  check_mixture(np.asarray(x))
  assert int(nfe) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
  ("sde_name", "predictor", "corrector"),
  [
    ("vpsde", "euler_maruyama", "none"),
    ("vpsde", "ancestral_sampling", "none"),
    ("subvpsde", "reverse_diffusion", "none"),
    ("vesde", "reverse_diffusion", "langevin"),
    ("vesde", "euler_maruyama", "ald"),
  ],
)
def test_pc_samplers_match_the_mixture(sde_name, predictor, corrector):
  sde = make_sde(sde_name)
  score_fn = closed_form.gaussian_mixture_score_fn(sde, WEIGHTS, MEANS, COVS)
  x, _ = pc_samples(sde, predictor, corrector, SNR, score_fn, seed=3)
  check_mixture(x)
