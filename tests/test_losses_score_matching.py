"""ESM, ISM, SSM, SSM-VR and DSM (losses.py) on Gaussian data with a linear score model.

Model: s(x) = -A x + c with A a full D x D matrix (so b = A^-1 c is the mean). Every objective is
quadratic in (A, c), so its empirical minimiser on a fixed sample solves H theta = -grad(0), with the
Hessian H and gradient from autodiff: an exact "fit" with no optimiser tolerance. The data are
x0 ~ N(mu, Sigma); under the VE SDE at time t, p_t = N(mu, Sigma + sigma(t)^2 I), whose score is
-(Sigma + sigma^2 I)^-1 (x - mu): each objective must recover that precision and mean.

Tolerances: the minimisers are functions of sample moments, so their error is Monte-Carlo error of
relative size ~ sqrt(2 / n) (about 0.7% for n = 40 000), more for DSM and SSM, whose noise z / sigma
and random projections add variance. We allow 5% relative (Frobenius) error, measured at 1-2.5%;
a wrong objective (e.g. a factor 2 on the trace) moves the minimiser by tens of percent.
Checks in float64 (jax.enable_x64) so that solving the normal equations adds no float32 error.
"""

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import closed_form
import losses
import sde_lib

Z = 4.0  # Monte-Carlo tolerance in standard errors (two-sided 6e-5 at a fixed seed).
D = 3
MU = np.array([1.0, -0.5, 0.25])
_L = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.4, 0.5]])
SIGMA = _L @ _L.T  # data covariance, eigenvalues ~0.1..1.6


def ve():
  return sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)


def linear_score(params, x, t, **kwargs):
  return -x @ params["A"].T + params["c"]


def data(key, n):
  return {"image": jnp.asarray(MU + np.asarray(jax.random.normal(key, (n, D))) @ _L.T)}


def kernel_var(sde, t):
  return float(closed_form.mean_coeff_and_std(sde, jnp.array([t]))[1][0]) ** 2


def true_score_fn(sde):
  return closed_form.gaussian_score_fn(sde, jnp.asarray(MU), jnp.asarray(SIGMA))


def quadratic_minimiser(loss_fn, batch, key):
  """Exact minimiser of a loss quadratic in the linear model's parameters, on a fixed sample."""
  template = {"A": jnp.zeros((D, D)), "c": jnp.zeros(D)}
  flat0, unravel = jax.flatten_util.ravel_pytree(template)
  f = lambda theta: loss_fn(unravel(theta), batch, key)[0]
  solve = jax.jit(lambda theta: jnp.linalg.solve(jax.hessian(f)(theta), -jax.grad(f)(theta)))
  return unravel(solve(flat0))


def relative_error(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


OBJECTIVES = {
  "esm": lambda sde, t: losses.esm_loss(
    sde, linear_score, train=False, true_score_fn=true_score_fn(sde), t_fixed=t
  ),
  "ism": lambda sde, t: losses.ism_loss(sde, linear_score, train=False, t_fixed=t),
  "ssm_rademacher": lambda sde, t: losses.ssm_loss(
    sde, linear_score, train=False, t_fixed=t, n_projections=2, projection="rademacher"
  ),
  "ssm_gaussian": lambda sde, t: losses.ssm_loss(
    sde, linear_score, train=False, t_fixed=t, n_projections=2, projection="gaussian"
  ),
  "ssm_vr": lambda sde, t: losses.ssm_vr_loss(
    sde, linear_score, train=False, t_fixed=t, n_projections=2, projection="gaussian"
  ),
  "dsm": lambda sde, t: losses.dsm_loss(sde, linear_score, train=False, t_fixed=t),
}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_linear_fit_recovers_precision_and_mean(objective):
  # ESM / ISM / SSM at t = 0 (sigma_min = 0.01: p_t is the data up to 1e-4 in variance); DSM at
  # sigma(t) = 0.5, where its minimiser is (Sigma + 0.25 I)^-1 (Vincent 2011): at small sigma the
  # DSM target z / sigma has variance D / sigma^2 and needs far more samples.
  sde = ve()
  t = losses.time_at_std(sde, 0.5) if objective == "dsm" else 0.0
  precision = np.linalg.inv(SIGMA + kernel_var(sde, t) * np.eye(D))
  with jax.enable_x64():
    batch = data(jax.random.PRNGKey(0), 40_000)
    fit = quadratic_minimiser(OBJECTIVES[objective](sde, t), batch, jax.random.PRNGKey(1))
    A, c = np.asarray(fit["A"]), np.asarray(fit["c"])
  print(objective, relative_error(A, precision), relative_error(np.linalg.solve(A, c), MU))
  assert relative_error(A, precision) < 0.05, (A, precision)
  assert relative_error(np.linalg.solve(A, c), MU) < 0.05


def test_dsm_single_recovers_the_smoothed_precision():
  # Vincent's single-noise DSM at sigma = 0.3 on VE: minimiser -(Sigma + sigma^2 I)^-1 (x - mu).
  sde, sigma = ve(), 0.3
  with jax.enable_x64():
    loss_fn = losses.dsm_single_loss(sde, linear_score, train=False, sigma=sigma)
    fit = quadratic_minimiser(loss_fn, data(jax.random.PRNGKey(2), 40_000), jax.random.PRNGKey(3))
    A, c = np.asarray(fit["A"]), np.asarray(fit["c"])
  assert relative_error(A, np.linalg.inv(SIGMA + sigma**2 * np.eye(D))) < 0.05
  assert relative_error(np.linalg.solve(A, c), MU) < 0.05


def random_params(key):
  key_a, key_c = jax.random.split(key)
  return {"A": jax.random.normal(key_a, (D, D)), "c": jax.random.normal(key_c, (D,))}


def test_esm_minus_ism_is_a_parameter_free_constant():
  # Hyvarinen 2005, Thm. 1: ESM(theta) = ISM(theta) + E ||s_true||^2 / 2, but only in expectation
  # over x (the cross term E[s^T s_true] = -E[tr ds/dx] comes from integrating by parts). So for
  # several random parameters, the per-example differences on one large sample must average to the
  # exact constant lambda E||s_true||^2 / 2 = std^2 tr(Sigma_t^-1) / 2 within Z standard errors,
  # while ESM and ISM themselves vary across parameters by far more than that error.
  sde, t = ve(), 0.3
  var_t = kernel_var(sde, t)
  constant = 0.5 * var_t * np.trace(np.linalg.inv(SIGMA + var_t * np.eye(D)))
  with jax.enable_x64():
    batch, key = data(jax.random.PRNGKey(4), 100_000), jax.random.PRNGKey(5)
    ism = jax.jit(losses.ism_loss(sde, linear_score, train=False, t_fixed=t, reduce_mean=False))
    esm = jax.jit(
      losses.esm_loss(
        sde,
        linear_score,
        train=False,
        true_score_fn=true_score_fn(sde),
        t_fixed=t,
        reduce_mean=False,
      )
    )
    values = []
    for k in range(4):
      params = random_params(jax.random.PRNGKey(100 + k))
      (esm_loss, esm_aux), (_, ism_aux) = esm(params, batch, key), ism(params, batch, key)
      diff = np.asarray(esm_aux["loss"] - ism_aux["loss"])
      se = diff.std(ddof=1) / math.sqrt(diff.size)
      assert abs(diff.mean() - constant) < Z * se, (k, diff.mean(), constant, se)
      values.append(float(esm_loss))
  assert np.ptp(values) > 100 * se  # the constant is not an accident of flat losses


def test_dsm_minus_esm_is_a_parameter_free_constant():
  # Vincent 2011: DSM(theta) - ESM(theta) = lambda (E||z / std||^2 - E||s_true||^2) / 2
  # = (D - std^2 tr(Sigma_t^-1)) / 2 with lambda = std^2 (half-sum form). The two losses draw
  # their samples differently, so compare means, each within its own standard error.
  sde, t = ve(), 0.3
  var_t = kernel_var(sde, t)
  constant = 0.5 * (D - var_t * np.trace(np.linalg.inv(SIGMA + var_t * np.eye(D))))
  with jax.enable_x64():
    batch, key = data(jax.random.PRNGKey(6), 100_000), jax.random.PRNGKey(7)
    dsm = jax.jit(losses.dsm_loss(sde, linear_score, train=False, t_fixed=t, reduce_mean=False))
    esm = jax.jit(
      losses.esm_loss(
        sde,
        linear_score,
        train=False,
        true_score_fn=true_score_fn(sde),
        t_fixed=t,
        reduce_mean=False,
      )
    )
    for k in range(3):
      params = random_params(jax.random.PRNGKey(200 + k))
      dsm_aux, esm_aux = dsm(params, batch, key)[1], esm(params, batch, key)[1]
      d, e = np.asarray(dsm_aux["loss"]), np.asarray(esm_aux["loss"])
      se = math.sqrt((d.var(ddof=1) + e.var(ddof=1)) / d.size)
      assert abs(d.mean() - e.mean() - constant) < Z * se, (k, d.mean() - e.mean(), constant, se)


def mlp_score(params, x, t, **kwargs):
  """A nonlinear score with a non-symmetric Jacobian: tanh(x W^T + t u) V^T + c."""
  hidden = jnp.tanh(x @ params["W"].T + t[:, None] * params["u"])
  return hidden @ params["V"].T + params["c"]


def mlp_params(key, hidden=16):
  keys = jax.random.split(key, 4)
  return {
    "W": jax.random.normal(keys[0], (hidden, D)),
    "u": jax.random.normal(keys[1], (hidden,)),
    "V": jax.random.normal(keys[2], (D, hidden)) / math.sqrt(hidden),
    "c": jax.random.normal(keys[3], (D,)),
  }


def test_ism_trace_equals_jacfwd_trace():
  # Per example: ISM = std^2 (||s||^2 / 2 + tr ds/dx) in half-sum form; the trace from jax.jacfwd.
  sde, t, params = ve(), 0.2, mlp_params(jax.random.PRNGKey(14))
  batch, key = data(jax.random.PRNGKey(8), 16), jax.random.PRNGKey(9)
  loss_fn = jax.jit(losses.ism_loss(sde, mlp_score, train=False, t_fixed=t, reduce_mean=False))
  _, aux = loss_fn(params, batch, key)
  x, _, std = losses._perturb(sde, jax.random.split(key, 4)[1], batch["image"], jnp.full(16, t))
  single = lambda xi: mlp_score(params, xi[None], jnp.full((1,), t))[0]
  trace = jax.vmap(lambda xi: jnp.trace(jax.jacfwd(single)(xi)))(x)
  score = mlp_score(params, x, jnp.full(16, t))
  want = std**2 * (0.5 * jnp.sum(score**2, axis=1) + trace)
  np.testing.assert_allclose(aux["loss"], want, rtol=2e-5, atol=1e-6)  # float32 round-off


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
@pytest.mark.parametrize("variance_reduction", [False, True])
@pytest.mark.parametrize("model", ["mlp", "linear"])
def test_ssm_is_an_unbiased_estimate_of_ism(projection, variance_reduction, model):
  # On the same samples x (same key), SSM - ISM has mean zero over the projections. K independent
  # keys give K independent differences (each averaged over B examples and M projections); their
  # mean must be within Z standard errors of 0, and that error must be small against ISM itself.
  sde, t = ve(), 0.2
  if model == "mlp":
    score_fn, params = mlp_score, mlp_params(jax.random.PRNGKey(15))
  else:
    score_fn, params = linear_score, random_params(jax.random.PRNGKey(10))
  kwargs = dict(train=False, t_fixed=t, reduce_mean=False)
  ssm = losses.ssm_loss(
    sde,
    score_fn,
    n_projections=8,
    projection=projection,
    variance_reduction=variance_reduction,
    **kwargs,
  )
  ism = losses.ism_loss(sde, score_fn, **kwargs)
  batch = data(jax.random.PRNGKey(11), 256)

  @jax.jit
  def difference(key):
    return ssm(params, batch, key)[0] - ism(params, batch, key)[0], ism(params, batch, key)[0]

  diffs, isms = jax.vmap(difference)(jax.random.split(jax.random.PRNGKey(12), 64))
  diffs = np.asarray(diffs)
  se = diffs.std(ddof=1) / math.sqrt(diffs.size)
  assert abs(diffs.mean()) < Z * se, (diffs.mean(), se)
  assert Z * se < 0.05 * abs(float(np.mean(isms)))


@pytest.mark.slow
def test_adam_training_with_step_fn_recovers_precision():
  # End to end: get_optimizer + get_step_fn + ISM on fresh batches at t = 0 (VE, p_0 ~ data):
  # the EMA parameters converge to the data precision and mean. Tolerance 5%: the Adam iterate
  # fluctuates with the minibatch noise (lr 1e-2 decays into an EMA of rate 0.99).
  import ml_collections

  sde = ve()
  config = ml_collections.ConfigDict(
    dict(optimizer="Adam", lr=1e-2, beta1=0.9, eps=1e-8, warmup=50, grad_clip=-1.0)
  )
  optimizer = losses.get_optimizer(config)
  loss_fn = losses.ism_loss(sde, linear_score, train=True, t_fixed=0.0)
  step = jax.jit(losses.get_step_fn(loss_fn, optimizer, ema_rate=0.99))
  state = losses.init_train_state({"A": jnp.eye(D), "c": jnp.zeros(D)}, optimizer)
  key = jax.random.PRNGKey(13)
  for i in range(3000):
    state, _ = step(state, data(jax.random.fold_in(key, i), 512), key)
  A, c = np.asarray(state.ema_params["A"]), np.asarray(state.ema_params["c"])
  precision = np.linalg.inv(SIGMA + kernel_var(sde, 0.0) * np.eye(D))
  assert relative_error(A, precision) < 0.05
  assert relative_error(np.linalg.solve(A, c), MU) < 0.05
