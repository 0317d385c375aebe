"""Denoising objectives (losses.py) against closed-form expectations for Gaussian data.

Data x0 ~ N(mu, s^2 I) stay Gaussian under every built-in SDE: with the kernel x_t = a x0 + std z,
x_t ~ N(a mu, (a^2 s^2 + std^2) I), whose exact score is -(x - a mu) / (a^2 s^2 + std^2). Then
  std score + z = (-std a (x0 - mu) + a^2 s^2 z) / (a^2 s^2 + std^2),
and the per-dimension DSM loss with lambda = std^2 has expectation
  E ||std score + z||^2 / D = a^2 s^2 / (a^2 s^2 + std^2)          (= s^2 / (s^2 + sigma^2) for VE).
Monte-Carlo checks compare the sample mean with this value and fail beyond Z standard errors
(Z = 4: a two-sided 6e-5 chance for a correct implementation at a given seed; the seeds are fixed,
so each check is deterministic).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import closed_form
import losses
import sde_lib
from configs import default_toy_configs

Z = 4.0  # Monte-Carlo tolerance in standard errors (see module docstring).
D = 4
MU = jnp.array([0.5, -1.0, 2.0, 0.0])
S = 0.7  # data std

SDES = {
  "vesde": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
  "vpsde": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
  "subvpsde": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
}


def gaussian_batch(key, n, d=D, mu=MU, s=S):
  return {"image": mu + s * jax.random.normal(key, (n, d))}


def exact_score(sde):
  """Exact score of p_t for N(MU, S^2 I) data: -(x - a MU) / (a^2 S^2 + std^2).

  The isotropic special case of closed_form.gaussian_score_fn (which solves a D x D Cholesky per
  example), cheaper for the large Monte-Carlo batches here; the two agree (checked below).
  """

  def score_fn(params, x, t, **kwargs):
    a, std = closed_form.mean_coeff_and_std(sde, t)
    a, std = a[:, None], std[:, None]
    return -(x - a * MU) / (a**2 * S**2 + std**2)

  return score_fn


@pytest.mark.parametrize("name", ["vesde", "vpsde"])
def test_isotropic_exact_score_equals_closed_form(name):
  sde = SDES[name]()
  x = gaussian_batch(jax.random.PRNGKey(0), 16)["image"]
  t = jax.random.uniform(jax.random.PRNGKey(1), (16,), minval=1e-3)
  reference = closed_form.gaussian_score_fn(sde, MU, S**2 * jnp.eye(D))(None, x, t)
  np.testing.assert_allclose(exact_score(sde)(None, x, t), reference, rtol=1e-4, atol=1e-5)


def per_dim_dsm_expectation(sde, t):
  """a^2 s^2 / (a^2 s^2 + std^2) at times t [n] (float64), from the SDE's own kernel."""
  with jax.enable_x64():
    a, std = closed_form.mean_coeff_and_std(sde, jnp.asarray(t, jnp.float64))
    a, std = np.asarray(a), np.asarray(std)
  return a**2 * S**2 / (a**2 * S**2 + std**2)


def time_integral(f, a, b, n=400):
  """int_a^b f(t) dt for a vectorised f, by Gauss-Legendre in u = log t (f smooth in log t).

  400 nodes integrate these smooth integrands to float64 round-off, far below Monte-Carlo error.
  """
  nodes, weights = np.polynomial.legendre.leggauss(n)
  lo, hi = np.log(a), np.log(b)
  u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
  return 0.5 * (hi - lo) * np.sum(weights * f(np.exp(u)) * np.exp(u))


def assert_mc_close(samples, expected, z=Z):
  samples = np.asarray(samples, np.float64)
  mean = samples.mean()
  se = samples.std(ddof=1) / math.sqrt(samples.size)
  assert abs(mean - expected) < z * se, (
    f"mean {mean:.6g} vs {expected:.6g}: z = {(mean - expected) / se:.2f}"
  )
  return mean, se


# --- Continuous DSM ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("t_fixed", [0.0, 0.05, 1.0])
def test_dsm_exact_score_expectation_at_fixed_t(name, t_fixed):
  # For VE this is the s^2 / (s^2 + sigma(t)^2) per dimension.
  sde = SDES[name]()
  if float(closed_form.mean_coeff_and_std(sde, jnp.array([t_fixed]))[1][0]) == 0.0:
    pytest.skip("no noise at t = 0 for VP-type SDEs")
  loss_fn = jax.jit(losses.dsm_loss(sde, exact_score(sde), train=False, t_fixed=t_fixed))
  _, aux = loss_fn(None, gaussian_batch(jax.random.PRNGKey(0), 20_000), jax.random.PRNGKey(1))
  assert_mc_close(aux["loss"], float(per_dim_dsm_expectation(sde, [t_fixed])[0]))


@pytest.mark.parametrize("name", list(SDES))
def test_dsm_exact_score_expectation_over_t(name):
  # E over t ~ U(eps, T) is the time average of the fixed-t value: a numerical integral (quad).
  sde, eps = SDES[name](), 1e-5
  loss_fn = jax.jit(losses.dsm_loss(sde, exact_score(sde), train=False, eps=eps))
  _, aux = loss_fn(None, gaussian_batch(jax.random.PRNGKey(2), 40_000), jax.random.PRNGKey(3))
  integral = time_integral(lambda t: per_dim_dsm_expectation(sde, t), eps, sde.T)
  assert_mc_close(aux["loss"], integral / (sde.T - eps))
  assert float(jnp.min(aux["t"])) >= eps and float(jnp.max(aux["t"])) <= sde.T


def test_dsm_sum_is_half_sum_and_mean_is_per_dimension():
  # reduce_mean=False gives half the sum over dimensions: D / 2 times the mean form, per example.
  sde = SDES["vesde"]()
  batch, key = gaussian_batch(jax.random.PRNGKey(4), 64), jax.random.PRNGKey(5)
  score_fn = lambda params, x, t, **kw: -x * params  # an arbitrary score
  _, mean_aux = losses.dsm_loss(sde, score_fn, train=False, reduce_mean=True)(2.0, batch, key)
  _, sum_aux = losses.dsm_loss(sde, score_fn, train=False, reduce_mean=False)(2.0, batch, key)
  np.testing.assert_allclose(sum_aux["loss"], mean_aux["loss"] * D / 2, rtol=1e-6)


def test_dsm_likelihood_weighting_expectation():
  # lambda = g^2: E = mean over t of (g^2 / std^2) a^2 s^2 / (a^2 s^2 + std^2) per dimension.
  sde, eps = SDES["vesde"](), 1e-3
  loss_fn = jax.jit(
    losses.dsm_loss(sde, exact_score(sde), train=False, eps=eps, likelihood_weighting=True)
  )
  _, aux = loss_fn(None, gaussian_batch(jax.random.PRNGKey(6), 40_000), jax.random.PRNGKey(7))
  assert_mc_close(aux["loss"], _likelihood_weighted_expectation(sde, eps))


def _lambda_over_std2(sde, t):
  """g(t)^2 / std(t)^2 [n] in float64."""
  with jax.enable_x64():
    t = jnp.asarray(t, jnp.float64)
    g = sde.sde(jnp.zeros((t.shape[0], 1), t.dtype), t)[1]
    std = sde.marginal_prob(jnp.zeros((t.shape[0], 1), t.dtype), t)[1]
    return np.asarray(g**2 / std**2)


def _likelihood_weighted_expectation(sde, eps):
  f = lambda t: _lambda_over_std2(sde, t) * per_dim_dsm_expectation(sde, t)
  return time_integral(f, eps, sde.T) / (sde.T - eps)


@pytest.mark.parametrize("name", ["vpsde", "subvpsde"])
def test_importance_sampling_is_unbiased_and_reduces_variance(name):
  # Both estimators of the likelihood-weighted loss must match the exact integral (unbiased), and
  # the importance-sampled one has lower variance: for VP-type SDEs g^2 / std^2 ~ 1 / t near eps, so
  # plain uniform t has a heavy tail. (For VE g^2 / std^2 is constant: both coincide in law.)
  sde, eps, n = SDES[name](), 1e-3, 50_000
  expected = _likelihood_weighted_expectation(sde, eps)
  results = {}
  for importance_sampling in (False, True):
    loss_fn = losses.dsm_loss(
      sde,
      exact_score(sde),
      train=False,
      eps=eps,
      likelihood_weighting=True,
      importance_sampling=importance_sampling,
    )
    _, aux = jax.jit(loss_fn)(None, gaussian_batch(jax.random.PRNGKey(8), n), jax.random.PRNGKey(9))
    assert np.all(np.asarray(aux["t"]) >= eps - 1e-7) and np.all(np.asarray(aux["t"]) <= sde.T)
    results[importance_sampling] = assert_mc_close(aux["loss"], expected)
  ratio = (results[False][1] / results[True][1]) ** 2
  print(f"{name}: variance(plain) / variance(importance sampled) = {ratio:.1f}")
  # Measured ratios: 17.5 (VP), 25.5 (sub-VP); asserting only > 2 keeps the check robust to seeds.
  assert ratio > 2.0


def test_importance_sampled_times_follow_g2_over_std2():
  # The sampled t must have density proportional to g^2 / std^2: compare cell frequencies of a
  # coarse partition with the integral of that density (binomial errors, Z standard errors).
  sde, eps, n = SDES["vpsde"](), 1e-3, 200_000
  draw = losses._time_and_weight(
    sde, eps=eps, likelihood_weighting=True, importance_sampling=True, t_fixed=None
  )
  t, _ = jax.jit(lambda k: draw(k, n, jnp.float32))(jax.random.PRNGKey(10))
  edges = np.geomspace(eps, 1.0, 9)
  counts, _ = np.histogram(np.asarray(t), edges)
  f = lambda s: _lambda_over_std2(sde, s)
  masses = np.array([time_integral(f, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)])
  p = masses / masses.sum()
  se = np.sqrt(n * p * (1 - p))
  assert np.all(np.abs(counts - n * p) < Z * se), (counts, n * p)


# --- Single-noise DSM ---------------------------------------------------------------------------


def test_time_at_std_inverts_the_kernel_std():
  ve = SDES["vesde"]()
  for sigma in (0.01, 0.1, 1.0, 50.0):
    t = losses.time_at_std(ve, sigma)
    np.testing.assert_allclose(t, math.log(sigma / 0.01) / math.log(5000.0), atol=1e-6)
  vp = SDES["vpsde"]()
  for sigma in (0.05, 0.5, 0.9):
    t = losses.time_at_std(vp, sigma)
    std = closed_form.mean_coeff_and_std(vp, jnp.array([t]))[1]
    np.testing.assert_allclose(std, sigma, rtol=1e-5)  # float32 kernel evaluations
  with pytest.raises(ValueError, match=r"config\.training\.sigma"):
    losses.time_at_std(ve, 100.0)


def test_dsm_single_uses_the_fixed_noise_level():
  # VE at sigma: x = x0 + sigma z, so the exact-score expectation is s^2 / (s^2 + sigma^2).
  sde, sigma = SDES["vesde"](), 0.5
  loss_fn = jax.jit(losses.dsm_single_loss(sde, exact_score(sde), train=False, sigma=sigma))
  _, aux = loss_fn(None, gaussian_batch(jax.random.PRNGKey(11), 20_000), jax.random.PRNGKey(12))
  np.testing.assert_allclose(sde.sigma(aux["t"]), sigma, rtol=1e-5)
  assert_mc_close(aux["loss"], S**2 / (S**2 + sigma**2))


# --- SMLD (VE) and DDPM (VP) --------------------------------------------------------------------


def smld_exact_score(sde):
  """Exact score of N(mu, s^2 I) + N(0, sigma_j^2 I) with level j read from the NCSN conditioning."""
  sigmas = sde.discrete_sigmas[::-1]  # indexed from sigma_max, as c_noise counts

  def score_fn(params, x, t, **kwargs):
    sigma = sigmas[sde.c_noise(t, continuous=False)]
    return -(x - MU) / (S**2 + sigma[:, None] ** 2)

  return score_fn


def test_smld_level_conditioning_and_sigma_agree_for_every_level():
  # With x0 = 0, x = sigma_i z, and a score that reads its level from c_noise(t) gives
  # sigma_i score + z = 0 exactly iff the level the network sees is the level used for the noise.
  sde = SDES["vesde"]()
  sigmas = sde.discrete_sigmas[::-1]

  def spy_score(params, x, t, **kwargs):
    return -x / sigmas[sde.c_noise(t, continuous=False)][:, None] ** 2

  loss_fn = jax.jit(losses.smld_loss(sde, spy_score, train=False))
  batch = {"image": jnp.zeros((32_768, 1))}
  _, aux = loss_fn(None, batch, jax.random.PRNGKey(13))
  assert float(jnp.max(aux["loss"])) < 1e-10  # float32 round-off of (sigma z) / sigma^2 * sigma
  # Every level is drawn (32768 draws over 1000 levels) ...
  levels = np.unique(np.asarray(sde.c_noise(aux["t"], continuous=False)))
  np.testing.assert_array_equal(levels, np.arange(sde.N))
  # ... and the sigma used is the VE kernel's std at the level's time (float32 exp vs pow).
  np.testing.assert_allclose(
    aux["sigma"], sde.marginal_prob(batch["image"], aux["t"])[1], rtol=2e-5
  )


def test_smld_exact_score_expectation():
  # E = mean over the N levels of s^2 / (s^2 + sigma_i^2) per dimension (reduce_mean).
  sde = SDES["vesde"]()
  loss_fn = jax.jit(losses.smld_loss(sde, smld_exact_score(sde), train=False, reduce_mean=True))
  _, aux = loss_fn(None, gaussian_batch(jax.random.PRNGKey(14), 40_000), jax.random.PRNGKey(15))
  sigmas = np.asarray(sde.discrete_sigmas, np.float64)
  assert_mc_close(aux["loss"], np.mean(S**2 / (S**2 + sigmas**2)))


def test_ddpm_step_conditioning_and_scaling_agree_for_every_step():
  # A spy network predicting eps = x / sqrt(1 - alpha_bar_c), with c read from c_noise(t), turned
  # into a score by VPSDE.output_to_score (discrete): with x0 = 0, x = sqrt(1 - alpha_bar_i) z and the
  # loss is 0 iff the step the network sees and the one output_to_score divides by are both i.
  sde = SDES["vpsde"]()

  def spy_score(params, x, t, **kwargs):
    c = sde.c_noise(t, continuous=False)
    step = jnp.round(c).astype(jnp.int32)
    eps_pred = x / sde.sqrt_1m_alphas_cumprod[step][:, None]
    return sde.output_to_score(eps_pred, x, t, continuous=False)

  loss_fn = jax.jit(losses.ddpm_loss(sde, spy_score, train=False))
  _, aux = loss_fn(None, {"image": jnp.zeros((32_768, 1))}, jax.random.PRNGKey(16))
  assert float(jnp.max(aux["loss"])) < 1e-10
  np.testing.assert_array_equal(np.unique(np.asarray(aux["step"])), np.arange(sde.N))
  # The conditioning is the step index to within float32 round-off of t (N - 1).
  np.testing.assert_allclose(sde.c_noise(aux["t"], continuous=False), aux["step"], atol=1e-3)


def test_ddpm_exact_score_expectation():
  # Discrete chain x_i = a_i x0 + std_i z, a_i = sqrt(alpha_bar_i), std_i^2 = 1 - a_i^2:
  # E ||std_i score + z||^2 / D = mean_i a_i^2 s^2 / (a_i^2 s^2 + std_i^2).
  sde = SDES["vpsde"]()
  a_all, std_all = sde.sqrt_alphas_cumprod, sde.sqrt_1m_alphas_cumprod

  def score_fn(params, x, t, **kwargs):
    step = jnp.round(sde.c_noise(t, continuous=False)).astype(jnp.int32)
    a, std = a_all[step][:, None], std_all[step][:, None]
    return -(x - a * MU) / (a**2 * S**2 + std**2)

  loss_fn = jax.jit(losses.ddpm_loss(sde, score_fn, train=False))
  _, aux = loss_fn(None, gaussian_batch(jax.random.PRNGKey(17), 40_000), jax.random.PRNGKey(18))
  a2 = np.asarray(a_all, np.float64) ** 2
  assert_mc_close(aux["loss"], np.mean(a2 * S**2 / (a2 * S**2 + 1 - a2)))


def test_train_mode_passes_a_dropout_key_to_the_score():
  sde = SDES["vesde"]()
  seen = {}

  def score_fn(params, x, t, *, train=False, rng=None):
    seen["train"], seen["rng"] = train, rng
    return -x

  batch = gaussian_batch(jax.random.PRNGKey(0), 8)
  losses.dsm_loss(sde, score_fn, train=True)(None, batch, jax.random.PRNGKey(1))
  assert seen["train"] and seen["rng"] is not None
  losses.dsm_loss(sde, score_fn, train=False)(None, batch, jax.random.PRNGKey(1))
  assert not seen["train"] and seen["rng"] is None


# --- The config edge and bad input --------------------------------------------------------------


def toy_config(**training):
  config = default_toy_configs.get_default_configs()
  for key, value in training.items():
    setattr(config.training, key, value)
  return config


def test_get_loss_fn_passes_config_values_to_the_factory():
  sde = SDES["vpsde"]()
  score_fn = exact_score(sde)
  batch, key = gaussian_batch(jax.random.PRNGKey(19), 16), jax.random.PRNGKey(20)
  config = toy_config(objective="ssm", n_projections=3, projection="gaussian", reduce_mean=False)
  got = losses.get_loss_fn(config, sde, score_fn, train=False)(None, batch, key)[0]
  want = losses.ssm_loss(
    sde, score_fn, train=False, n_projections=3, projection="gaussian", reduce_mean=False
  )(None, batch, key)[0]
  assert float(got) == float(want)
  config = toy_config(objective="dsm_single", sigma=0.3)
  _, aux = losses.get_loss_fn(config, sde, score_fn, train=False)(None, batch, key)
  np.testing.assert_allclose(closed_form.mean_coeff_and_std(sde, aux["t"])[1], 0.3, rtol=1e-5)


@pytest.mark.parametrize(
  ("sde_name", "training", "match"),
  [
    ("vpsde", {"objective": "nope"}, r"config\.training\.objective.*Valid choices: .*dsm"),
    ("vpsde", {"objective": "ssm", "projection": "sphere"}, r"config\.training\.projection"),
    ("vpsde", {"eps": 0.0}, r"config\.training\.eps"),
    ("vpsde", {"eps": 1.0}, r"config\.training\.eps"),
    ("vpsde", {"eps": -1e-3}, r"config\.training\.eps"),
    ("vpsde", {"objective": "ism", "eps": 2.0}, r"config\.training\.eps"),
    ("vpsde", {"objective": "smld"}, r"'smld'.*config\.sde\.name"),
    ("vesde", {"objective": "ddpm"}, r"'ddpm'.*config\.sde\.name"),
    ("vpsde", {"importance_sampling": True}, r"config\.training\.likelihood_weighting"),
    (
      "vpsde",
      {"objective": "ddpm", "likelihood_weighting": True},
      r"config\.training\.likelihood_weighting",
    ),
    ("vpsde", {"continuous": False}, r"config\.training\.continuous"),
    ("vesde", {"objective": "smld", "t_fixed": 0.0}, r"config\.training\.t_fixed"),
    ("vpsde", {"objective": "esm"}, r"true_score_fn"),
    ("vpsde", {"objective": "ssm", "n_projections": 0}, r"config\.training\.n_projections"),
    ("vesde", {"objective": "dsm_single", "sigma": 1e3}, r"config\.training\.sigma"),
  ],
)
def test_bad_config_errors_name_the_field(sde_name, training, match):
  sde = SDES[sde_name]()
  with pytest.raises(ValueError, match=match):
    losses.get_loss_fn(toy_config(**training), sde, exact_score(sde), train=True)


def test_smld_on_vp_names_the_sde_field():
  with pytest.raises(ValueError, match=r"'smld'.*VPSDE \(config\.sde\.name\)"):
    losses.smld_loss(SDES["vpsde"](), exact_score(SDES["vpsde"]()), train=True)


def test_ism_refuses_large_dimensions():
  sde = SDES["vesde"]()
  loss_fn = losses.ism_loss(sde, lambda p, x, t, **kw: -x, train=False, max_dim=16)
  with pytest.raises(ValueError, match=r"max_dim = 16.*'ssm'"):
    loss_fn(None, {"image": jnp.zeros((2, 17))}, jax.random.PRNGKey(0))
