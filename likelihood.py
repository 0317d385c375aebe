"""Log-likelihoods and bits/dim through the probability-flow ODE.

Song et al. 2021 (arXiv:2011.13456), Sec. 4.3 and App. D.2: along a solution x_t of the
probability-flow ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 (Eq. 13), the density obeys
the instantaneous change of variables (Chen et al. 2018)

    d/dt log p_t(x_t) = -div f~(x_t, t),

so integrating the augmented state (x, delta_logp) with d delta_logp / dt = div f~ from t = eps to T gives

    log p_eps(x) = log p_T(x_T) + delta_logp(T)      (Eq. 40),

with p_T replaced by the prior `sde.prior_logp`. The drift is `sde.reverse(score, True).sde`, the one
formula the samplers use too. The divergence is the exact trace of the Jacobian (small dimensions) or
the Hutchinson-Skilling estimate v^T (d f~ / dx) v with one probe v per example, drawn once and kept
for the whole solve (as FFJORD and the reference do), which makes the log-likelihood an unbiased
estimate up to solver error: delta_logp is linear in v^T J v, and E[v v^T] = I.

Two entry points:
- `get_log_likelihood_fn`: log p(x) in nats of the data as given (non-image data, toy data);
- `get_likelihood_fn`: bits/dim of 8-bit images, with the reference's offset and optional uniform
  dequantisation (the DESIGN.md contract `likelihood(rng, params, x) -> (bpd, z, nfe)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from utils import Registry, check_eps, sum_except_batch

ScoreFn = Callable[..., jax.Array]
"""score_fn(params, x [B, ...], t [B], *, train=False, rng=None) -> [B, ...] (DESIGN.md)."""

ProbeFn = Callable[[jax.Array, tuple[int, ...], Any], jax.Array | None]
"""probe(key, shape, dtype) -> Hutchinson probes [shape], or None for the exact trace."""

DIVERGENCES: Registry[ProbeFn] = Registry(
  "divergence estimator (hutchinson_type)", "config.eval.hutchinson_type"
)


@DIVERGENCES.register("rademacher")
def rademacher(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """Probes uniform on {-1, 1}^D: the estimate's variance is sum_{i<j} (A_ij + A_ji)^2 (Jacobian A)."""
  return jax.random.rademacher(key, shape, dtype)


@DIVERGENCES.register("gaussian")
def gaussian(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """Standard normal probes: the estimate's variance is 2 |(A + A^T) / 2|_F^2 (Jacobian A)."""
  return jax.random.normal(key, shape, dtype)


@DIVERGENCES.register("exact")
def exact(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> None:
  """No probe: the exact trace of the Jacobian, by D Jacobian-vector products."""
  del key, shape, dtype


def divergence(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array, probe: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """fn(x) [B, ...] and the divergence of the example-wise `fn` at x [B].

  With a probe v [B, ...], the Hutchinson-Skilling estimate v^T (d fn / dx) v per example, by one
  Jacobian-vector product; E[v^T A v] = tr(A) when E[v v^T] = I. With `probe=None`, the exact trace
  by D = prod(x.shape[1:]) Jacobian-vector products: `fn` must act on each example separately (as a
  drift does), so one basis direction e_j, shared by every example, gives column j of every
  example's Jacobian at once.

  Args:
    fn: maps [B, ...] -> [B, ...], each example on its own.
    x: the point [B, ...].
    probe: Hutchinson probes [B, ...] (from a `DIVERGENCES` entry), or None for the exact trace.
  """
  if probe is not None:
    fx, jv = jax.jvp(fn, (x,), (probe.astype(x.dtype),))
    return fx, sum_except_batch(jv * probe)
  d = int(np.prod(x.shape[1:]))
  basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1, *x.shape[1:]))
  fx, fn_jvp = jax.linearize(fn, x)
  columns = jax.vmap(lambda e: fn_jvp(jnp.broadcast_to(e, x.shape)))(basis)  # [D, B, ...]
  return fx, jnp.trace(columns.reshape(d, x.shape[0], d), axis1=0, axis2=2)


# Explicit Runge-Kutta solvers, whose Butcher tableau gives the number of drift evaluations.
_ODE_SOLVERS = {
  cls.__name__.lower(): cls
  for cls in (diffrax.Dopri5, diffrax.Tsit5, diffrax.Bosh3, diffrax.Heun, diffrax.Dopri8)
}


def _get_solver(solver: str | diffrax.AbstractSolver) -> tuple[diffrax.AbstractSolver, int, int]:
  """The solver, its drift evaluations before the first step and per attempted step.

  A first-same-as-last (FSAL) tableau costs one evaluation at the start and num_stages - 1 per
  attempted step (accepted or rejected); otherwise num_stages per step (diffrax 0.7.2; the tests
  count the evaluations).
  """
  if isinstance(solver, str):
    if solver.lower() not in _ODE_SOLVERS:
      raise ValueError(
        f"Unknown ODE solver {solver!r} (the `solver` argument of the likelihood, "
        f"config.sampling.ode_solver). Valid choices: {', '.join(sorted(_ODE_SOLVERS))}."
      )
    solver = _ODE_SOLVERS[solver.lower()]()
  tableau = getattr(solver, "tableau", None)
  if not isinstance(tableau, diffrax.ButcherTableau):
    raise ValueError(
      f"The likelihood counts drift evaluations from a Butcher tableau; {type(solver).__name__} has "
      f"none. Valid choices: {', '.join(sorted(_ODE_SOLVERS))}."
    )
  fsal = int(bool(tableau.fsal))
  return solver, fsal, tableau.num_stages - fsal


def get_log_likelihood_fn(
  sde,
  score_fn: ScoreFn,
  *,
  hutchinson_type: str = "rademacher",
  rtol: float = 1e-5,
  atol: float = 1e-5,
  solver: str | diffrax.AbstractSolver = "dopri5",
  eps: float = 1e-5,
  max_steps: int = 4096,
) -> Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
  """Builds log p_eps(x) in nats through the probability-flow ODE (Eq. 13 and 40).

  Args:
    sde: the forward `sde_lib.SDE`; its prior gives log p_T.
    score_fn: `score_fn(params, x, t, *, train=False, rng=None)`.
    hutchinson_type: "rademacher", "gaussian" (Hutchinson-Skilling estimates, unbiased) or "exact"
      (the Jacobian's trace by D Jacobian-vector products: small D only).
    rtol, atol: tolerances of the adaptive step-size controller (diffrax PID controller).
    solver: an explicit Runge-Kutta solver, by name ("dopri5" = the reference's RK45, "tsit5",
      "bosh3", "heun", "dopri8") or as a diffrax instance.
    eps: the ODE starts at t = eps > 0, where the score is finite; the result is log p_eps(x), which
      differs from log p_0(x) by O(std(eps)^2 / data variance).
    max_steps: the most solver steps an example may take (more is an error).

  Returns:
    `log_likelihood(rng, params, x) -> (logp [B], z [B, ...], nfe [])`, jit-able: logp in nats of x
    as given, z the end point at T of each example's ODE path, and nfe the number of drift
    evaluations on the batch. Each example is solved with its own adaptive steps (vmapped), so its
    result does not depend on the rest of the batch; nfe counts up to the slowest example.

  Raises:
    ValueError: for an unknown hutchinson_type or solver, or eps outside (0, T).
  """
  draw_probe = DIVERGENCES.get(hutchinson_type)
  check_eps(eps, sde.T, "eps of the likelihood (argument of get_likelihood_fn)")
  solver, initial_evaluations, evaluations_per_step = _get_solver(solver)
  t0, t1 = float(eps), float(sde.T)

  def log_likelihood(rng, params, x):
    score = lambda x, t: score_fn(params, x, t, train=False)
    drift = lambda x, t: sde.reverse(score, probability_flow=True).sde(x, t)[0]
    # One probe per example, fixed for the whole solve.
    probes = draw_probe(rng, x.shape, x.dtype)

    def vector_field(t, state, probe):
      y, _ = state
      t_vec = jnp.full((1,), t, y.dtype)
      return divergence(lambda y: drift(y, t_vec), y, probe)

    def solve_one(x_b, probe_b):
      probe = None if probe_b is None else probe_b[None]
      solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0,
        t1,
        (t1 - t0) / 100,
        (x_b[None], jnp.zeros((1,), x.dtype)),
        args=probe,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
      )
      z_b, delta_logp = solution.ys
      return z_b[-1, 0], delta_logp[-1, 0], solution.stats["num_steps"]

    z, delta_logp, num_steps = jax.vmap(solve_one)(x, probes)
    logp = sde.prior_logp(z) + delta_logp
    nfe = initial_evaluations + evaluations_per_step * jnp.max(num_steps)
    return logp, z, nfe.astype(jnp.int32)

  return log_likelihood


def _affine_coefficients(
  inverse_scaler: Callable[[jax.Array], jax.Array] | None,
) -> tuple[float, float]:
  """(slope, intercept) of the affine inverse data scaler y = slope x + intercept (identity if None)."""
  if inverse_scaler is None:
    return 1.0, 0.0
  points = np.asarray(inverse_scaler(jnp.array([-1.0, 0.0, 1.0], jnp.float32)), np.float64)
  slope, intercept = (points[2] - points[0]) / 2, points[1]
  if not np.allclose(points, intercept + slope * np.array([-1.0, 0.0, 1.0]), rtol=1e-6, atol=1e-6):
    raise ValueError(
      "Bits/dim need an affine inverse data scaler (as config.data.centered gives: x -> (x + 1) / 2 "
      f"or the identity); this one maps -1, 0, 1 to {points.tolist()}."
    )
  if slope <= 0:
    raise ValueError(f"The inverse data scaler must be increasing; its slope is {slope}.")
  return float(slope), float(intercept)


def bits_per_dim(
  logp: jax.Array, dim: int, inverse_scaler: Callable[[jax.Array], jax.Array] | None = None
) -> jax.Array:
  """Bits/dim of 8-bit data from the log-density logp [B] (nats) of the scaled data, D = `dim`.

  The model sees x = scaler(y), with y in [0, 1] the dequantised image, and `inverse_scaler` maps x
  back to y = a x + b (a = 1/2 for centered data in [-1, 1], a = 1 for data kept in [0, 1]). Then

    log p_Y(y) = log p_X(x) - D log a            (change of variables),
    P(pixel bin) ~ p_Y(y) / 256^D                 (a bin of an 8-bit value is 1/256 wide in [0, 1]),
    bpd = -log2 P / D = -logp / (D ln 2) + log2(a) + 8.

  The offset log2(a) + 8 is the reference's `log2(grad(inverse_scaler)(0)) + 8`: 7 for centered
  data, 8 for data in [0, 1]. With uniform dequantisation (`get_likelihood_fn(dequantize=True)`)
  the result is an upper bound on the discrete model's bits/dim, by Jensen's inequality.

  Args:
    logp: log-density of the scaled data, nats [B].
    dim: D, the number of dimensions (pixels x channels) of one example.
    inverse_scaler: the affine map from model space to [0, 1]; None for the identity.
  """
  return _bits_per_dim(logp, dim, _affine_coefficients(inverse_scaler)[0])


def _bits_per_dim(logp: jax.Array, dim: int, slope: float) -> jax.Array:
  return -logp / (dim * np.log(2.0)) + np.log2(slope) + 8.0


def get_likelihood_fn(
  sde,
  score_fn: ScoreFn,
  inverse_scaler: Callable[[jax.Array], jax.Array] | None = None,
  *,
  hutchinson_type: str = "rademacher",
  rtol: float = 1e-5,
  atol: float = 1e-5,
  solver: str | diffrax.AbstractSolver = "dopri5",
  eps: float = 1e-5,
  dequantize: bool = False,
  max_steps: int = 4096,
) -> Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
  """Builds bits/dim of 8-bit images through the probability-flow ODE (DESIGN.md, "Likelihood").

  Args:
    sde: the forward `sde_lib.SDE`.
    score_fn: `score_fn(params, x, t, *, train=False, rng=None)`.
    inverse_scaler: the affine map from the model's data space to [0, 1] (`x -> (x + 1) / 2` for
      centered data); None for data already in [0, 1]. It fixes the offset (see `bits_per_dim`).
    hutchinson_type, rtol, atol, solver, eps, max_steps: as in `get_log_likelihood_fn`.
    dequantize: if True, x holds quantised 8-bit images in model space (inverse_scaler(x) in
      {0, 1/255, ..., 1}) and each pixel y is replaced by (255 y + u) / 256, u ~ U[0, 1), before
      scaling back: the uniform dequantisation the reference applies to its evaluation data
      (datasets.py, `uniform_dequantization=True`), moving each 8-bit value k to a uniform point of
      its bin [k / 256, (k + 1) / 256). If False, x is used as given (already dequantised data).

  Returns:
    `likelihood(rng, params, x) -> (bpd [B], z [B, ...], nfe [])`, jit-able; x [B, ...] is in the
    model's (scaled) data space, z its latent code at T and nfe the drift evaluations.
  """
  slope, intercept = _affine_coefficients(inverse_scaler)
  log_likelihood = get_log_likelihood_fn(
    sde,
    score_fn,
    hutchinson_type=hutchinson_type,
    rtol=rtol,
    atol=atol,
    solver=solver,
    eps=eps,
    max_steps=max_steps,
  )

  def likelihood(rng, params, x):
    rng, dequantize_key = jax.random.split(rng)
    if dequantize:
      y = slope * x + intercept
      y = (255.0 * y + jax.random.uniform(dequantize_key, x.shape, x.dtype)) / 256.0
      x = (y - intercept) / slope
    logp, z, nfe = log_likelihood(rng, params, x)
    return _bits_per_dim(logp, int(np.prod(x.shape[1:])), slope), z, nfe

  return likelihood
