"""Controllable generation against closed form (Song et al. 2021, App. I).

Gaussian data N(mu, Sigma) stay Gaussian under VP and VE, so with the exact score (closed_form.py):

- the PC sampler with replacement and a predictor only is a linear-Gaussian recursion, whose exact
  output law (mean and covariance) this file propagates step by step (`exact_law`); Monte-Carlo
  samples must match it (z-scores). That law is NOT the Gaussian conditional in general: replacement
  uses the joint score at a freshly noised copy of the observation, and for this Sigma the gap is
  O(1) (e.g. VP, N = 1000: filled-in mean -0.84 vs the conditional -0.62), see the module docstring
  of controllable_generation.py;
- with a Langevin corrector (snr 0.16, one step per time, N = 1000) the filled-in coordinates follow
  the Gaussian conditional within Monte-Carlo error (slow tests). That is measured, not proved: the
  corrector at small t samples p_t(x_u | x_o) ~ p(x_u | y); the measured z-scores are below 1.5 and the
  tests allow 4.5.

Observed coordinates come back exactly (pixel mask) or to round-off (through a transform).
Everything here runs in float64 (the `x64` fixture) except the data-parallel tests (float32, the
default: they check equality of two runs, not accuracy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import closed_form
import controllable_generation as cg
import sampling
import sde_lib

# Z-score bound for every Monte-Carlo comparison: with < 20 comparisons per test, a false failure
# has probability < 20 x 7e-6 (two-sided normal tail at 4.5).
Z = 4.5

RNG = np.random.default_rng(0)
_A = RNG.normal(size=(4, 4))
COV4 = _A @ _A.T / 4 + 0.3 * np.eye(4)  # non-diagonal, eigenvalues 0.3 .. 3
MU4 = np.array([0.5, -1.0, 0.3, 1.0])
OBSERVED = np.array([0, 2])
HIDDEN = np.array([1, 3])
Y4 = np.array([1.0, 0.0, -0.5, 0.0])  # the values at OBSERVED matter only

COV3 = np.array([[1.0, 0.7, 0.4], [0.7, 1.2, 0.5], [0.4, 0.5, 0.8]])  # RGB covariance of a pixel
MU3 = np.array([0.2, -0.1, 0.3])


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def identity(x):
  return x


def make_sde(name, N):
  if name == "vpsde":
    return sde_lib.VPSDE(N=N)
  return sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=N)


def build(sde, observation, shape, corrector="none", snr=0.16):
  return cg.get_linear_observation_sampler(
    sde,
    closed_form.gaussian_score_fn(
      sde, MU4 if shape[1:] == (4,) else MU3, COV4 if shape[1:] == (4,) else COV3
    ),
    shape,
    observation,
    sampling.PREDICTORS.get("reverse_diffusion"),
    sampling.CORRECTORS.get(corrector),
    identity,
    snr=snr,
  )


def exact_law(sde, mean, cov, observation, y, mask, eps=1e-3):
  """Exact mean [D] and covariance [D, D] of the predictor-only replacement sampler's output.

  Replacement is x <- (I - P) x + P (a(t) y + std(t) z) with P = U^T M U the projection on the
  observed subspace; the reverse-diffusion step is affine in x for an affine (Gaussian) score,
  x <- F(x) + G z, so the law stays Gaussian: m <- F(m), C <- J C J^T + G^2 I (J the Jacobian of F).
  The last step keeps F(x) (noise removal), then the observation is imposed exactly.
  """
  shape = (1,) + y.shape[1:]
  d = int(np.prod(shape[1:]))
  basis = jnp.eye(d).reshape((d,) + shape[1:])
  rows = observation.forward(basis).reshape(d, -1)  # U e_i, i.e. U^T as a matrix [D, D]
  proj = rows @ jnp.diag(mask[0].reshape(-1).astype(float)) @ rows.T
  eye = jnp.eye(d)
  y_flat = y[0].reshape(-1)
  score_fn = closed_form.gaussian_score_fn(sde, mean, cov)
  predictor = sampling.ReverseDiffusionPredictor(sde, lambda x, t: score_fn(None, x, t))
  keys = sampling.example_keys(jax.random.key(0), 1)

  def F(x, t):
    return predictor.update(keys, x.reshape(shape), jnp.full((1,), t))[1].reshape(-1)

  def step(carry, t):
    m, C = carry
    a, std = closed_form.mean_coeff_and_std(sde, jnp.full((1,), t))
    m = (eye - proj) @ m + a[0] * proj @ y_flat
    C = (eye - proj) @ C @ (eye - proj) + std[0] ** 2 * proj
    J = jax.jacfwd(F)(m, t)
    G = sde.discretize(jnp.zeros((1, d)), jnp.full((1,), t))[1][0]
    m, C_mean = F(m, t), J @ C @ J.T
    return (m, C_mean + G**2 * eye), (m, C_mean)

  # The prior is N(0, v I); v read off its log-density: log p(0) - log p(e_1) = 1 / (2 v).
  logps = sde.prior_logp(jnp.zeros((2, d)).at[0, 0].set(1.0))
  prior_var = 1.0 / (2.0 * float(logps[1] - logps[0]))
  times = sampling.linear_timesteps(sde.T, eps, sde.N, jnp.float64)
  _, (ms, Cs) = jax.lax.scan(step, (jnp.zeros(d), prior_var * eye), times)
  m = (eye - proj) @ ms[-1] + proj @ y_flat
  C = (eye - proj) @ Cs[-1] @ (eye - proj)
  return np.asarray(m), np.asarray(C)


def gaussian_conditional(mean, cov, observed, hidden, values):
  """Mean and covariance of x[hidden] given x[observed] = values for x ~ N(mean, cov)."""
  k = cov[np.ix_(hidden, observed)] @ np.linalg.inv(cov[np.ix_(observed, observed)])
  return mean[hidden] + k @ (values - mean[observed]), cov[np.ix_(hidden, hidden)] - k @ cov[
    np.ix_(observed, hidden)
  ]


def assert_gaussian_moments(samples, mean, cov):
  """Sample mean and covariance of samples [n, k] against (mean [k], cov [k, k]) by z-scores.

  Standard errors: sqrt(C_ii / n) for a mean; sqrt((C_ii C_jj + C_ij^2) / n) for a covariance
  entry of Gaussian data.
  """
  n = samples.shape[0]
  z_mean = (samples.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
  diag = np.diag(cov)
  se_cov = np.sqrt((np.outer(diag, diag) + cov**2) / n)
  z_cov = (np.cov(samples.T).reshape(cov.shape) - cov) / se_cov
  assert np.max(np.abs(z_mean)) < Z, (samples.mean(0), mean, z_mean)
  assert np.max(np.abs(z_cov)) < Z, (np.cov(samples.T), cov, z_cov)


def inpaint(sde, n, corrector="none"):
  y = jnp.broadcast_to(jnp.asarray(Y4), (n, 4))
  mask = jnp.zeros((n, 4), bool).at[:, OBSERVED].set(True)
  sample = jax.jit(build(sde, cg.inpainting(), (n, 4), corrector))
  x, nfe = sample(jax.random.key(1), None, y, mask)
  return np.asarray(x), int(nfe), y, mask


@pytest.mark.parametrize("sde_name", ["vpsde", pytest.param("vesde", marks=pytest.mark.slow)])
def test_inpainting_matches_the_exact_law_of_replacement(sde_name):
  sde = make_sde(sde_name, 250)
  x, nfe, y, mask = inpaint(sde, 2000)
  assert nfe == 250
  # The observed coordinates are the observation, bit for bit.
  np.testing.assert_array_equal(x[:, OBSERVED], np.broadcast_to(Y4[OBSERVED], (2000, 2)))
  m, C = exact_law(sde, MU4, COV4, cg.inpainting(), y[:1], mask[:1])
  assert_gaussian_moments(x[:, HIDDEN], m[HIDDEN], C[np.ix_(HIDDEN, HIDDEN)])


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vpsde", "vesde"])
def test_inpainting_with_langevin_corrector_follows_the_gaussian_conditional(sde_name):
  x, nfe, _, _ = inpaint(make_sde(sde_name, 1000), 4000, corrector="langevin")
  assert nfe == 2000
  np.testing.assert_array_equal(x[:, OBSERVED], np.broadcast_to(Y4[OBSERVED], (4000, 2)))
  mean, cov = gaussian_conditional(MU4, COV4, OBSERVED, HIDDEN, Y4[OBSERVED])
  assert_gaussian_moments(x[:, HIDDEN], mean, cov)


GREY = 0.4


def colorize(sde, n, corrector="none"):
  grey = jnp.full((n, 1, 1, 1), GREY)
  y = cg.colorization_data(grey)
  mask = cg.colorization_mask((n, 1, 1, 3))
  sample = jax.jit(build(sde, cg.colorization(), (n, 1, 1, 3), corrector))
  x, _ = sample(jax.random.key(2), None, y, mask)
  return np.asarray(x), y, mask


def decoupled(x):
  return np.asarray(x).reshape(-1, 3) @ cg.colour_decoupling_matrix(np.float64).T


@pytest.mark.parametrize("sde_name", ["vpsde", pytest.param("vesde", marks=pytest.mark.slow)])
def test_colorization_keeps_the_grey_image_and_matches_the_exact_law(sde_name):
  sde = make_sde(sde_name, 250)
  x, y, mask = colorize(sde, 2000)
  # The grey channel (mean of RGB) is the given one, to float64 round-off through Q and Q^T.
  np.testing.assert_allclose(x.mean(axis=-1), GREY, atol=1e-12)
  m, C = exact_law(sde, MU3, COV3, cg.colorization(), y[:1], mask[:1])
  q = cg.colour_decoupling_matrix(np.float64)
  u_mean, u_cov = q @ m, q @ C @ q.T
  np.testing.assert_allclose(u_mean[0], np.sqrt(3) * GREY, atol=1e-12)
  assert_gaussian_moments(decoupled(x)[:, 1:], u_mean[1:], u_cov[1:, 1:])


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vpsde", "vesde"])
def test_colorization_with_langevin_corrector_follows_the_gaussian_conditional(sde_name):
  x, _, _ = colorize(make_sde(sde_name, 1000), 4000, corrector="langevin")
  np.testing.assert_allclose(x.mean(axis=-1), GREY, atol=1e-12)
  # In decoupled coordinates u = Q rgb ~ N(Q mu, Q Sigma Q^T); condition on u_0 = sqrt(3) grey.
  q = cg.colour_decoupling_matrix(np.float64)
  mean, cov = gaussian_conditional(
    q @ MU3, q @ COV3 @ q.T, np.array([0]), np.array([1, 2]), np.array([np.sqrt(3) * GREY])
  )
  assert_gaussian_moments(decoupled(x)[:, 1:], mean, cov)


def test_superresolution_transform_is_orthogonal_and_observes_block_means():
  x = jax.random.normal(jax.random.key(3), (2, 4, 6, 3))
  obs = cg.superresolution(2)
  u = obs.forward(x)
  assert u.shape == (2, 2, 3, 3, 4)
  np.testing.assert_allclose(obs.inverse(u), x, atol=1e-12)
  np.testing.assert_allclose(jnp.sum(u**2), jnp.sum(x**2), rtol=1e-12)  # orthogonal
  np.testing.assert_allclose(u[..., 0], 2 * cg.downsample(x, 2), atol=1e-12)
  # The block image of a low-resolution image has exactly its block means and nothing else.
  lowres = cg.downsample(x, 2)
  u_y = obs.forward(cg.superresolution_data(lowres, 2))
  np.testing.assert_allclose(u_y[..., 1:], 0.0, atol=1e-12)


def test_superresolution_sampler_imposes_the_block_means():
  sde = make_sde("vpsde", 30)
  n, shape = 4, (4, 4, 4, 1)
  score_fn = closed_form.gaussian_score_fn(sde, np.zeros(16), np.eye(16) + 0.5)
  sample = cg.get_linear_observation_sampler(
    sde,
    score_fn,
    shape,
    cg.superresolution(2),
    sampling.PREDICTORS.get("euler_maruyama"),
    sampling.CORRECTORS.get("langevin"),
    identity,
    snr=0.16,
  )
  lowres = jax.random.normal(jax.random.key(4), (n, 2, 2, 1))
  x, _ = jax.jit(sample)(
    jax.random.key(5), None, cg.superresolution_data(lowres, 2), cg.superresolution_mask(shape, 2)
  )
  np.testing.assert_allclose(cg.downsample(x, 2), lowres, atol=1e-12)
  assert float(jnp.std(x - cg.superresolution_data(lowres, 2))) > 0.1  # details were filled in


# --- Class-conditional sampling on a two-component mixture. ----------------------------------------

MIX_COV = np.array([[1.0, 0.4], [0.4, 0.6]])
MIX_MEANS = np.array([[-0.6, 0.3], [0.6, -0.3]])
MIX_WEIGHTS = np.array([0.5, 0.5])


def mixture_logits_fn(sde):
  """The exact p_t(y | x) of the mixture: logits log w_k + log N_t(x; component k)."""

  def logits_fn(params, x, t):
    del params
    return jnp.stack(
      [
        jnp.log(w) + closed_form.gaussian_logp(sde, m, MIX_COV, x, t)
        for w, m in zip(MIX_WEIGHTS, MIX_MEANS, strict=True)
      ],
      axis=-1,
    )

  return logits_fn


def mahalanobis_gap():
  d = MIX_MEANS[1] - MIX_MEANS[0]
  return float(np.sqrt(d @ np.linalg.solve(MIX_COV, d)))


def conditional_samples(sde, n, scale, corrector="none"):
  sample = cg.get_conditional_sampler(
    sde,
    closed_form.gaussian_mixture_score_fn(sde, MIX_WEIGHTS, MIX_MEANS, np.stack([MIX_COV] * 2)),
    mixture_logits_fn(sde),
    (n, 2),
    2,
    sampling.PREDICTORS.get("reverse_diffusion"),
    sampling.CORRECTORS.get(corrector),
    identity,
    snr=0.16,
    scale=scale,
  )
  x, _ = jax.jit(sample)(jax.random.key(6), (None, None), jnp.zeros(n, jnp.int32))
  x = np.asarray(x)
  # Bayes assignment at t = 0: component 0 iff its responsibility exceeds one half.
  logits = mixture_logits_fn(sde)(None, jnp.asarray(x), jnp.zeros(n))
  return x, np.mean(np.argmax(np.asarray(logits), -1) == 0)


@pytest.mark.parametrize("sde_name", ["vpsde", pytest.param("vesde", marks=pytest.mark.slow)])
def test_guidance_with_the_exact_classifier_samples_the_requested_component(sde_name):
  # With scale 1, score + grad log p_t(y | x) = grad log p_t(x | y): the component's exact score.
  sde = make_sde(sde_name, 500)
  n = 3000
  x, rate = conditional_samples(sde, n, 1.0)
  assert_gaussian_moments(x, MIX_MEANS[0], MIX_COV)
  # Equal covariances: the Bayes boundary is linear and P(assigned to 0 | drawn from 0) =
  # Phi(Delta / 2), Delta the Mahalanobis distance of the means (here Phi(0.83) ~ 0.80).
  expected = scipy.stats.norm.cdf(mahalanobis_gap() / 2)
  assert abs(rate - expected) < Z * np.sqrt(expected * (1 - expected) / n), (rate, expected)


@pytest.mark.slow
def test_guidance_scale_above_one_sharpens_towards_the_class():
  # Scale s samples ~ p_t(x) p_t(y | x)^s: more mass where the classifier is confident, so the
  # rate of samples assigned to the requested class rises above Phi(Delta / 2).
  sde = make_sde("vpsde", 500)
  n = 3000
  _, rate1 = conditional_samples(sde, n, 1.0)
  _, rate4 = conditional_samples(sde, n, 4.0)
  se = np.sqrt(0.25 / n)
  assert rate4 > rate1 + 2 * Z * se, (rate1, rate4)


def test_guided_score_is_score_plus_scale_times_classifier_gradient():
  sde = make_sde("vpsde", 10)
  score_fn = closed_form.gaussian_mixture_score_fn(
    sde, MIX_WEIGHTS, MIX_MEANS, np.stack([MIX_COV] * 2)
  )
  logits_fn = mixture_logits_fn(sde)
  x = jax.random.normal(jax.random.key(7), (5, 2))
  t = jnp.full((5,), 0.3)
  labels = jnp.array([0, 1, 1, 0, 1])

  @jax.jit
  def scores(x, t, labels):
    guided = cg.guided_score_fn(score_fn, logits_fn, 2.5)(((None, None), labels), x, t)
    component = jnp.stack(
      [closed_form.gaussian_score_fn(sde, MIX_MEANS[k], MIX_COV)(None, x, t) for k in range(2)]
    )[labels, jnp.arange(5)]
    bayes = cg.guided_score_fn(score_fn, logits_fn, 1.0)(((None, None), labels), x, t)
    return guided, component, bayes, score_fn(None, x, t)

  guided, component, bayes, score = scores(x, t, labels)
  # Scale 1 gives the component's own score exactly (Bayes' rule); float64 round-off.
  np.testing.assert_allclose(bayes, component, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(guided, score + 2.5 * (component - score), rtol=1e-10, atol=1e-12)


# --- The noise-conditional classifier trains. -------------------------------------------------------


def mlp_logits_fn(params, x, t):
  """A small time-conditioned MLP: inputs (x, t), two tanh layers, two logits."""
  h = jnp.concatenate([x, t[:, None]], axis=-1)
  for w, b in params[:-1]:
    h = jnp.tanh(h @ w + b)
  w, b = params[-1]
  return h @ w + b


@pytest.mark.slow
def test_noise_conditional_classifier_is_accurate_at_small_t_and_at_chance_at_T():
  sde = sde_lib.VPSDE()
  means = np.array([[-2.0, 0.0], [2.0, 0.0]])  # unit covariance: Bayes accuracy Phi(2) = 0.977
  sizes = [3, 32, 32, 2]
  keys = jax.random.split(jax.random.key(8), len(sizes))
  params = [
    (jax.random.normal(k, (i, o)) / np.sqrt(i), jnp.zeros(o))
    for k, i, o in zip(keys, sizes[:-1], sizes[1:], strict=False)
  ]
  optimizer = optax.adam(3e-3)
  loss_fn = cg.classifier_loss_fn(sde, mlp_logits_fn)
  step = jax.jit(cg.classifier_step_fn(loss_fn, optimizer))
  opt_state = optimizer.init(params)

  def batch(key, n):
    k1, k2 = jax.random.split(key)
    labels = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    return {"image": jnp.asarray(means)[labels] + jax.random.normal(k2, (n, 2)), "label": labels}

  key = jax.random.key(9)
  for _ in range(600):
    key, data_key, step_key = jax.random.split(key, 3)
    params, opt_state, _ = step(params, opt_state, batch(data_key, 256), step_key)
  test = batch(jax.random.key(10), 4000)
  small = cg.classifier_accuracy(
    mlp_logits_fn, params, jax.random.key(11), sde, test["image"], test["label"], 0.01
  )
  large = cg.classifier_accuracy(
    mlp_logits_fn, params, jax.random.key(12), sde, test["image"], test["label"], 1.0
  )
  # At t = 0.01 the data are almost clean: Bayes accuracy ~ Phi(2) = 0.977 (SE 0.0024 at n = 4000);
  # at t = T = 1 the VP kernel keeps a(1) = 0.0065 of the data: Bayes accuracy Phi(0.013) = 0.505,
  # so 0.55 is > 6 standard errors (0.008) above chance.
  assert float(small) > 0.95, float(small)
  assert float(large) < 0.55, float(large)


# --- Data parallelism: 8 devices reproduce 1. ------------------------------------------------------


def test_data_parallel_inpainting_and_guidance_reproduce_one_device():
  with jax.enable_x64(False):
    devices = jax.device_count()
    assert devices == 8
    n, per_device = 16, 2
    sde = make_sde("vesde", 20)
    score_fn = closed_form.gaussian_score_fn(sde, MU4.astype(np.float32), COV4.astype(np.float32))
    kwargs = dict(
      predictor=sampling.PREDICTORS.get("reverse_diffusion"),
      corrector=sampling.CORRECTORS.get("langevin"),
      inverse_scaler=identity,
      snr=0.16,
    )
    y = jax.random.normal(jax.random.key(13), (n, 4))
    mask = jax.random.bernoulli(jax.random.key(14), 0.5, (n, 4))
    one = cg.get_linear_observation_sampler(sde, score_fn, (n, 4), cg.inpainting(), **kwargs)
    per = cg.get_linear_observation_sampler(
      sde, score_fn, (per_device, 4), cg.inpainting(), **kwargs
    )
    key = jax.random.key(15)
    x1, nfe1 = jax.jit(one)(key, None, y, mask)
    x8, nfe8 = cg.data_parallel_observation_sampler(per, per_device)(key, None, y, mask)
    assert int(nfe1) == int(nfe8)
    # The Langevin step size averages norms over the batch: equal up to float32 summation order.
    np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(x8)[np.asarray(mask)], np.asarray(y)[np.asarray(mask)])

    sde = make_sde("vpsde", 30)
    mix_score = closed_form.gaussian_mixture_score_fn(
      sde, MIX_WEIGHTS, MIX_MEANS.astype(np.float32), np.stack([MIX_COV] * 2).astype(np.float32)
    )
    labels = jnp.arange(n, dtype=jnp.int32) % 2
    kwargs["corrector"] = sampling.CORRECTORS.get("none")
    one = cg.get_conditional_sampler(
      sde, mix_score, mixture_logits_fn(sde), (n, 2), 2, scale=2.0, **kwargs
    )
    per = cg.get_conditional_sampler(
      sde, mix_score, mixture_logits_fn(sde), (per_device, 2), 2, scale=2.0, **kwargs
    )
    x1, _ = jax.jit(one)(key, (None, None), labels)
    x8, _ = cg.data_parallel_conditional_sampler(per, per_device)(key, (None, None), labels)
    np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), rtol=1e-5, atol=1e-6)


# --- Bad input. -------------------------------------------------------------------------------------


class NoKernelSDE(sde_lib.SDE):
  """An SDE without a Gaussian perturbation kernel (marginal_prob is not implemented)."""

  def sde(self, x, t):
    return -(x**3), jnp.ones_like(t)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return -0.5 * jnp.sum(z**2, axis=-1)


def test_bad_input_errors_name_what_is_wrong():
  sde = make_sde("vpsde", 30)
  sample = build(sde, cg.inpainting(), (3, 4))
  with pytest.raises(ValueError, match="mask has shape"):
    sample(jax.random.key(0), None, jnp.zeros((3, 4)), jnp.zeros((3, 5), bool))
  with pytest.raises(ValueError, match="observed image y has shape"):
    sample(jax.random.key(0), None, jnp.zeros((3, 2)), jnp.zeros((3, 4), bool))
  with pytest.raises(ValueError, match="one channel"):
    cg.colorization_data(jnp.zeros((2, 4, 4, 3)))
  with pytest.raises(ValueError, match="RGB"):
    cg.get_linear_observation_sampler(
      sde,
      closed_form.gaussian_score_fn(sde, np.zeros(4), np.eye(4)),
      (2, 2, 2, 1),
      cg.colorization(),
      sampling.PREDICTORS.get("reverse_diffusion"),
      sampling.CORRECTORS.get("none"),
      identity,
      snr=0.16,
    )(jax.random.key(0), None, jnp.zeros((2, 2, 2, 1)), jnp.zeros((2, 2, 2, 1), bool))
  with pytest.raises(ValueError, match="NoKernelSDE.*marginal_prob"):
    cg.get_linear_observation_sampler(
      NoKernelSDE(5),
      lambda params, x, t: -x,
      (2, 4),
      cg.inpainting(),
      sampling.PREDICTORS.get("euler_maruyama"),
      sampling.CORRECTORS.get("none"),
      identity,
      snr=0.16,
    )
  with pytest.raises(ValueError, match="NoKernelSDE"):
    cg.classifier_loss_fn(NoKernelSDE(5), mlp_logits_fn)
  conditional = cg.get_conditional_sampler(
    sde,
    lambda params, x, t, **kw: -x,
    mixture_logits_fn(sde),
    (3, 2),
    2,
    sampling.PREDICTORS.get("euler_maruyama"),
    sampling.CORRECTORS.get("none"),
    identity,
    snr=0.16,
  )
  with pytest.raises(ValueError, match=r"\[2\] are outside the classifier's range 0 .. 1"):
    conditional(jax.random.key(0), (None, None), jnp.array([0, 2, 1]))
  with pytest.raises(ValueError, match=r"shaped \[3\]"):
    conditional(jax.random.key(0), (None, None), jnp.array([0, 1]))
