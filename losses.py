"""Score-matching objectives, the optimizer, and the pure train / eval step builders.

Every objective is built by a factory registered in `OBJECTIVES` and returns

    loss_fn(params, batch, rng) -> (loss, aux)

where `batch["image"]` holds x0 [B, ...] (images [B, H, W, C] or vectors [B, D]; a `"label"` entry
is ignored), `loss` is the batch mean of the per-example losses and `aux` holds per-example
diagnostics. Objectives see the network only through a score function
`score_fn(params, x, t, *, train=False, rng=None)` (DESIGN.md), so a closed-form score is as good
as a trained network, and they ask the SDE only through its methods.

Common conventions, chosen so that every objective sits on the same footing:
- Time and weighting. The continuous objectives draw t ~ U(eps, T) (or use a fixed t), perturb
  x_t = mean(x0, t) + std(t) z with the SDE's Gaussian kernel, and weight the score error at t by
  lambda(t) = std(t)^2 (Song et al. 2021, Eq. 7) or, with likelihood weighting, lambda(t) = g(t)^2
  (Song et al. 2021b, "Maximum likelihood training of score-based diffusion models", Thm. 1).
  Importance sampling draws t with density proportional to g(t)^2 / std(t)^2 and reweights, which
  keeps the expectation of the likelihood-weighted loss unchanged (Song et al. 2021b, Sec. 5.1).
- Reduction over data dimensions, as in Song et al.'s code: `reduce_mean=True` gives the mean over
  the D dimensions of the squared error, `reduce_mean=False` half its sum. With the sum, DSM equals
  lambda(t) ||s - grad log p_0t||^2 / 2, ESM lambda ||s - s_true||^2 / 2, ISM
  lambda (||s||^2 / 2 + tr ds/dx): the three differ by constants, so their minimisers agree.
  The mean is 2 / D times the sum for every objective.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from utils import Registry, batch_mul, check_eps, sum_except_batch

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]
ScoreFn = Callable[..., jax.Array]
"""score_fn(params, x [B, ...], t [B], *, train=False, rng=None) -> [B, ...] (DESIGN.md)."""

OBJECTIVES: Registry[Callable[..., LossFn]] = Registry("objective", "config.training.objective")
register_objective = OBJECTIVES.register

PROJECTIONS: Registry[Callable[..., jax.Array]] = Registry(
  "projection", "config.training.projection"
)
register_projection = PROJECTIONS.register

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry(
  "optimizer", "config.optim.optimizer"
)
register_optimizer = OPTIMIZERS.register


# --- Shared pieces ------------------------------------------------------------------------------


def _kernel_std(sde, t: jax.Array) -> jax.Array:
  """std(t) [B] of the SDE's perturbation kernel."""
  return sde.marginal_prob(jnp.zeros((t.shape[0], 1), t.dtype), t)[1]


def _diffusion(sde, t: jax.Array) -> jax.Array:
  """g(t) [B] of the forward SDE."""
  return sde.sde(jnp.zeros((t.shape[0], 1), t.dtype), t)[1]


def _reduce(half_sum: jax.Array, dim: int, reduce_mean: bool) -> jax.Array:
  """Per-example objective [B] given as half a sum over dimensions; the mean form is 2 / D of it."""
  return half_sum * (2.0 / dim) if reduce_mean else half_sum


def _event_dim(x0: jax.Array) -> int:
  return math.prod(x0.shape[1:])


def _score_kwargs(train: bool, key: jax.Array) -> dict[str, Any]:
  """Keyword arguments of a score_fn call: dropout gets `key` only when training."""
  return {"train": True, "rng": key} if train else {"train": False}


def time_at_std(sde, sigma: float, field: str = "config.training.sigma") -> float:
  """The time t in [0, T] at which the SDE's kernel std(t) equals `sigma` (nested grid search).

  For the VE SDE this is log(sigma / sigma_min) / log(sigma_max / sigma_min), where the kernel is
  x0 + sigma z (Vincent 2011's single-noise perturbation).

  Raises:
    ValueError: naming `field` if `sigma` is outside the range of std over [0, T] or std is not
      increasing in t.
  """
  T = float(sde.T)
  grid = np.linspace(0.0, T, 1001)
  stds = np.asarray(_kernel_std(sde, jnp.asarray(grid, jnp.float32)), np.float64)
  if not np.all(np.diff(stds) > 0):
    raise ValueError(
      f"{field} needs an SDE whose kernel std(t) increases with t; {type(sde).__name__}'s does not."
    )
  if not stds[0] <= sigma <= stds[-1]:
    raise ValueError(
      f"{field} = {sigma} is outside the range of the SDE's noise std over [0, T]: "
      f"[{stds[0]:.6g}, {stds[-1]:.6g}]."
    )
  # Refine the bracketing cell on finer and finer grids: each pass shrinks it 1000-fold (to 1e-9 T).
  for _ in range(2):
    k = int(np.clip(np.searchsorted(stds, sigma), 1, len(grid) - 1))
    grid = np.linspace(grid[k - 1], grid[k], 1001)
    stds = np.asarray(_kernel_std(sde, jnp.asarray(grid, jnp.float32)), np.float64)
  k = int(np.clip(np.searchsorted(stds, sigma), 1, len(grid) - 1))
  return float(0.5 * (grid[k - 1] + grid[k]))


class _LikelihoodTimeSampler:
  """Draws t on [eps, T] with density q(t) proportional to lambda(t) = g(t)^2 / std(t)^2.

  Song et al. 2021b (Sec. 5.1) sample t from this density to reduce the variance of the
  likelihood-weighted loss; the VP SDE has a closed-form inverse CDF. Here any SDE works: the
  density is tabulated on a grid dense near eps (where g^2 / std^2 ~ 1 / t for VP), cell masses come
  from the trapezoidal rule, and t is drawn by picking a cell by its mass and then uniformly inside
  it. The density of that procedure, q(t) = mass_k / width_k, is known exactly, so reweighting by
  lambda(t) / ((T - eps) q(t)) keeps the estimator exactly unbiased for E_{t ~ U(eps, T)}; the grid
  only decides how much variance is removed.
  """

  def __init__(self, sde, eps: float, n_grid: int = 2048):
    T = float(sde.T)
    grid = np.union1d(np.geomspace(eps, T, n_grid // 2), np.linspace(eps, T, n_grid // 2))
    grid[0], grid[-1] = eps, T
    t = jnp.asarray(grid, jnp.float32)
    density = np.asarray(_diffusion(sde, t) ** 2 / _kernel_std(sde, t) ** 2, np.float64)
    if not np.all(np.isfinite(density)) or np.any(density <= 0):
      raise ValueError(
        "config.training.importance_sampling needs g(t)^2 / std(t)^2 finite and positive on "
        f"[eps, T]; {type(sde).__name__} gives {density.min():.3g}..{density.max():.3g}."
      )
    width = np.diff(grid)
    mass = 0.5 * (density[1:] + density[:-1]) * width
    total = mass.sum()
    self.normaliser = float(total)  # Z = integral of g^2 / std^2 over [eps, T] (trapezoid).
    self._left = jnp.asarray(grid[:-1], jnp.float32)
    self._width = jnp.asarray(width, jnp.float32)
    self._cdf = jnp.asarray(np.concatenate([[0.0], np.cumsum(mass) / total]), jnp.float32)
    self._prob = jnp.asarray(mass / total, jnp.float32)
    self._span = T - eps

  def __call__(self, key: jax.Array, n: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Returns t [n] ~ q and the importance weight 1 / ((T - eps) q(t)) [n]."""
    key_u, key_v = jax.random.split(key)
    u = jax.random.uniform(key_u, (n,))
    cell = jnp.clip(jnp.searchsorted(self._cdf, u, side="right") - 1, 0, self._width.shape[0] - 1)
    v = jax.random.uniform(key_v, (n,))
    t = self._left[cell] + v * self._width[cell]
    density = self._prob[cell] / self._width[cell]
    return t.astype(dtype), (1.0 / (self._span * density)).astype(dtype)


def _time_and_weight(
  sde,
  *,
  eps: float,
  likelihood_weighting: bool,
  importance_sampling: bool,
  t_fixed: float | None,
) -> Callable[[jax.Array, int, Any], tuple[jax.Array, jax.Array]]:
  """Builds `draw(key, n, dtype) -> (t [n], w [n])` for the continuous objectives.

  `w` is lambda(t) / std(t)^2 times the importance weight, i.e. the factor that multiplies the
  std-scaled squared error ||std (s - target)||^2: 1 for lambda = std^2, g^2 / std^2 for likelihood
  weighting.
  """
  T = float(sde.T)
  if t_fixed is not None:
    if not 0.0 <= float(t_fixed) <= T or float(_kernel_std(sde, jnp.full((1,), t_fixed))[0]) <= 0:
      raise ValueError(
        f"config.training.t_fixed = {t_fixed} must lie in [0, T={T}] where the noise std is positive."
      )
    if importance_sampling:
      raise ValueError(
        "config.training.importance_sampling draws t, so it cannot be combined with a fixed t."
      )
  else:
    check_eps(eps, T, "config.training.eps")
  if importance_sampling and not likelihood_weighting:
    raise ValueError(
      "config.training.importance_sampling samples t for the likelihood-weighted loss; set "
      "config.training.likelihood_weighting = True too."
    )
  sampler = _LikelihoodTimeSampler(sde, float(eps)) if importance_sampling else None

  def draw(key: jax.Array, n: int, dtype) -> tuple[jax.Array, jax.Array]:
    if sampler is not None:
      t, importance = sampler(key, n, dtype)
    elif t_fixed is not None:
      t, importance = jnp.full((n,), t_fixed, dtype), jnp.ones((n,), dtype)
    else:
      t, importance = (
        jax.random.uniform(key, (n,), dtype, minval=eps, maxval=T),
        jnp.ones((n,), dtype),
      )
    if likelihood_weighting:
      weight = _diffusion(sde, t) ** 2 / _kernel_std(sde, t) ** 2
    else:
      weight = jnp.ones_like(t)
    return t, weight * importance

  return draw


def _perturb(sde, key: jax.Array, x0: jax.Array, t: jax.Array):
  """x_t = mean(x0, t) + std(t) z from the SDE's Gaussian kernel; returns (x_t, z, std)."""
  z = jax.random.normal(key, x0.shape, x0.dtype)
  mean, std = sde.marginal_prob(x0, t)
  return mean + batch_mul(std, z), z, std


class _Noised(NamedTuple):
  """A batch perturbed at its noise levels: x = mean(x0) + std z."""

  x: jax.Array  # [B, ...]
  z: jax.Array  # [B, ...], the N(0, I) noise
  std: jax.Array  # [B]
  t: jax.Array  # [B], the time the network is conditioned on
  # [B], lambda(t) / std(t)^2 times the importance weight (see _time_and_weight); 1 when discrete.
  weight: jax.Array


def _objective(
  draw: Callable[..., tuple[_Noised, dict]],
  per_example: Callable[..., jax.Array],
  *,
  train: bool,
  reduce_mean: bool,
  objective_key: bool = False,
) -> LossFn:
  """The frame of every objective: draw noise levels and x, evaluate per example, reduce, average.

  `draw(key_level, key_z, x0) -> (noised, extra aux [B])`; `per_example(params, noised, key,
  score_kwargs) -> [B]`, the weighted objective in half-sum form. `rng` gives the keys of the
  levels, of z, of the objective's own draws (if `objective_key`) and of the score's dropout.
  """

  def loss_fn(params, batch, rng):
    x0 = batch["image"]
    keys = jax.random.split(rng, 4 if objective_key else 3)
    noised, aux = draw(keys[0], keys[1], x0)
    key_objective = keys[2] if objective_key else None
    half_sum = per_example(params, noised, key_objective, _score_kwargs(train, keys[-1]))
    losses = _reduce(half_sum, _event_dim(x0), reduce_mean)
    return jnp.mean(losses), {"loss": losses, "t": noised.t, **aux}

  return loss_fn


def _perturbed_objective(
  sde,
  per_example: Callable[..., jax.Array],
  *,
  objective_key: bool = False,
  train: bool,
  reduce_mean: bool,
  eps: float,
  likelihood_weighting: bool,
  importance_sampling: bool,
  t_fixed: float | None,
) -> LossFn:
  """`_objective` at continuous times: t and its weight from `_time_and_weight`, x_t from the SDE's
  Gaussian kernel (`_perturb`). Shared by DSM, SSM, ISM and ESM, so they see the same t and x_t."""
  draw_t = _time_and_weight(
    sde,
    eps=eps,
    likelihood_weighting=likelihood_weighting,
    importance_sampling=importance_sampling,
    t_fixed=t_fixed,
  )

  def draw(key_t, key_z, x0):
    t, weight = draw_t(key_t, x0.shape[0], x0.dtype)
    x, z, std = _perturb(sde, key_z, x0, t)
    return _Noised(x, z, std, t, weight), {}

  return _objective(
    draw, per_example, train=train, reduce_mean=reduce_mean, objective_key=objective_key
  )


def _denoising_error(score_fn: ScoreFn) -> Callable[..., jax.Array]:
  """DSM's per-example objective, weight ||std s(x, t) + z||^2 / 2 (summed over dimensions)."""

  def per_example(params, noised, key, score_kwargs):
    del key
    score = score_fn(params, noised.x, noised.t, **score_kwargs)
    error = batch_mul(noised.std, score) + noised.z
    return 0.5 * noised.weight * sum_except_batch(jnp.square(error))

  return per_example


# --- Denoising score matching -------------------------------------------------------------------


@register_objective("dsm")
def dsm_loss(
  sde,
  score_fn: ScoreFn,
  *,
  train: bool,
  reduce_mean: bool = True,
  eps: float = 1e-5,
  likelihood_weighting: bool = False,
  importance_sampling: bool = False,
  t_fixed: float | None = None,
) -> LossFn:
  """Continuous denoising score matching for any SDE with a Gaussian kernel (Song et al. 2021, Eq. 7).

  Per example: t ~ U(eps, T), z ~ N(0, I), x_t = mean(x0, t) + std(t) z, and
  lambda(t) ||s(x_t, t) + z / std(t)||^2 / 2 (summed over dimensions; `reduce_mean` gives 2 / D of
  that), with lambda = std^2, i.e. ||std s + z||^2 / 2, or lambda = g^2 (likelihood weighting,
  Song et al. 2021b, Eq. 9 / Thm. 1), optionally with importance-sampled t (same expectation).

  Args:
    sde: an `sde_lib.SDE` with `marginal_prob`.
    score_fn: the model's score function.
    train: whether the score function runs in training mode (dropout, keyed by the loss's rng).
    reduce_mean: mean over dimensions (True) or half the sum.
    eps: smallest time drawn, in (0, T).
    likelihood_weighting: lambda(t) = g(t)^2 instead of std(t)^2.
    importance_sampling: draw t with density proportional to g^2 / std^2 (needs likelihood_weighting).
    t_fixed: if given, every example uses this t (single-noise DSM at that time).

  Returns:
    `loss_fn(params, batch, rng) -> (loss, {"loss": [B], "t": [B]})`.
  """
  return _perturbed_objective(
    sde,
    _denoising_error(score_fn),
    train=train,
    reduce_mean=reduce_mean,
    eps=eps,
    likelihood_weighting=likelihood_weighting,
    importance_sampling=importance_sampling,
    t_fixed=t_fixed,
  )


@register_objective("dsm_single")
def dsm_single_loss(
  sde, score_fn: ScoreFn, *, train: bool, sigma: float, reduce_mean: bool = True
) -> LossFn:
  """Single-noise denoising score matching (Vincent 2011) at noise level `sigma`.

  The noise level is placed on the SDE: t* is the time at which the kernel std equals `sigma`
  (`time_at_std`), x = mean(x0, t*) + sigma z, and the loss is ||sigma s(x, t*) + z||^2 / 2 summed
  (or its mean form). For the VE SDE, mean(x0, t*) = x0, so this is exactly Vincent's objective
  E ||s(x0 + sigma z) + z / sigma||^2 sigma^2 / 2, whose minimiser is the score of the data
  convolved with N(0, sigma^2 I); for Gaussian data N(mu, Sigma) that is -(Sigma + sigma^2 I)^-1
  (x - mu). Evaluating the score at t* keeps a time-conditioned network consistent with the SDE.

  Args:
    sde: an `sde_lib.SDE` with `marginal_prob` whose std increases with t.
    score_fn: the model's score function.
    train: training mode for the score function.
    sigma: the noise level (config.training.sigma).
    reduce_mean: mean over dimensions (True) or half the sum.
  """
  return dsm_loss(
    sde, score_fn, train=train, reduce_mean=reduce_mean, t_fixed=time_at_std(sde, float(sigma))
  )


def _require(sde, attributes: tuple[str, ...], objective: str, sde_kind: str) -> None:
  missing = [a for a in attributes if not hasattr(sde, a)]
  if missing:
    raise ValueError(
      f"config.training.objective = {objective!r} needs {sde_kind} ({', '.join(missing)}), which "
      f"{type(sde).__name__} (config.sde.name) does not define. Use objective 'dsm', or an SDE "
      "with those discrete levels."
    )


def _level_time(i: jax.Array, N: int, T: float, dtype) -> jax.Array:
  """Time t_i = T i / (N - 1) of discrete level i in [0, N), the reference's time grid."""
  return (i.astype(dtype) / max(N - 1, 1)) * T


def _step_times(N: int, T: float, dtype) -> np.ndarray:
  """t_i = T i / (N - 1) [N] in `dtype`, each moved up by ulps until floor(t_i (N - 1) / T) = i.

  The VP SDE reads the DDPM step back as floor(t (N - 1) / T); in float32, T i / (N - 1) rounds
  below i / (N - 1) for about a sixth of the steps when N = 1000, which would select step i - 1.
  The table is built in numpy (the same IEEE arithmetic the step read-out uses), so no compiler
  simplification can undo the correction.
  """
  dtype = np.dtype(dtype)
  steps = np.arange(N)
  t = (steps / max(N - 1, 1) * T).astype(dtype)
  for _ in range(8):
    low = np.floor(t * dtype.type(N - 1) / dtype.type(T)) < steps
    if not low.any():
      return t
    t[low] = np.nextafter(t[low], dtype.type(2 * T))
  raise AssertionError("could not place the DDPM step times on the float grid")


@register_objective("smld")
def smld_loss(sde, score_fn: ScoreFn, *, train: bool, reduce_mean: bool = False) -> LossFn:
  """SMLD / NCSN loss over N discrete noise levels (Song & Ermon 2019, Eq. 2; Song et al. 2021, Eq. 1).

  Level i ~ U{0, ..., N - 1}, sigma_i = `sde.discrete_sigmas[i]` (ascending: i = 0 is sigma_min),
  x = x0 + sigma_i z, loss ||sigma_i s + z||^2 / 2 summed (`reduce_mean`: its mean form). The
  network sees level i through the time t_i = T i / (N - 1): the VE SDE's discrete conditioning
  c_noise(t_i, continuous=False) = round((T - t_i)(N - 1)) = N - 1 - i counts levels from sigma_max
  as NCSN does, and its continuous one, sigma(t_i), equals sigma_i.

  Args:
    sde: an SDE with `discrete_sigmas` [N] (the VE SDE).
    score_fn: the model's score function.
    train: training mode for the score function.
    reduce_mean: mean over dimensions, or half the sum (the reference's default for SMLD).
  """
  _require(sde, ("discrete_sigmas",), "smld", "discrete noise levels sigma_i")
  sigmas = jnp.asarray(sde.discrete_sigmas)
  N, T = sigmas.shape[0], float(sde.T)

  def draw(key_i, key_z, x0):
    i = jax.random.randint(key_i, (x0.shape[0],), 0, N)
    sigma = sigmas[i].astype(x0.dtype)
    t = _level_time(i, N, T, x0.dtype)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    noised = _Noised(x0 + batch_mul(sigma, z), z, sigma, t, jnp.ones_like(sigma))
    return noised, {"sigma": sigma}

  return _objective(draw, _denoising_error(score_fn), train=train, reduce_mean=reduce_mean)


@register_objective("ddpm")
def ddpm_loss(sde, score_fn: ScoreFn, *, train: bool, reduce_mean: bool = True) -> LossFn:
  """DDPM epsilon-prediction loss (Ho et al. 2020, Eq. 14, "L_simple").

  Step i ~ U{0, ..., N - 1}, x = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) z and the loss
  ||sqrt(1 - alpha_bar_i) s + z||^2, which equals ||eps_pred - z||^2 for a network predicting
  eps = -sqrt(1 - alpha_bar_i) s (mean over dimensions, or half the sum). The network sees step i
  through t_i = T i / (N - 1), for which the VP SDE's discrete conditioning is t_i (N - 1) = i and
  its discrete `output_to_score` divides by sqrt(1 - alpha_bar_i) (`_step_times` keeps float
  rounding from selecting step i - 1).

  Args:
    sde: an SDE with `sqrt_alphas_cumprod` and `sqrt_1m_alphas_cumprod` [N] (the VP SDE).
    score_fn: the model's score function.
    train: training mode for the score function.
    reduce_mean: mean over dimensions, or half the sum.
  """
  _require(
    sde,
    ("sqrt_alphas_cumprod", "sqrt_1m_alphas_cumprod"),
    "ddpm",
    "discrete alphas (the DDPM chain)",
  )
  signal = jnp.asarray(sde.sqrt_alphas_cumprod)
  noise = jnp.asarray(sde.sqrt_1m_alphas_cumprod)
  N, T = signal.shape[0], float(sde.T)

  def draw(key_i, key_z, x0):
    i = jax.random.randint(key_i, (x0.shape[0],), 0, N)
    t = jnp.asarray(_step_times(N, T, x0.dtype))[i]
    std = noise[i].astype(x0.dtype)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    x = batch_mul(signal[i].astype(x0.dtype), x0) + batch_mul(std, z)
    return _Noised(x, z, std, t, jnp.ones_like(std)), {"step": i}

  return _objective(draw, _denoising_error(score_fn), train=train, reduce_mean=reduce_mean)


# --- Score matching without the conditional score: SSM, ISM, ESM ---------------------------------


@register_projection("rademacher")
def rademacher_projection(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """Random signs +-1: E[v v^T] = I."""
  return jax.random.rademacher(key, shape, dtype)


@register_projection("gaussian")
def gaussian_projection(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """Standard normal entries: E[v v^T] = I."""
  return jax.random.normal(key, shape, dtype)


@register_objective("ssm")
def ssm_loss(
  sde,
  score_fn: ScoreFn,
  *,
  train: bool,
  n_projections: int = 1,
  projection: str | Callable[..., jax.Array] = "rademacher",
  variance_reduction: bool = False,
  reduce_mean: bool = True,
  eps: float = 1e-5,
  likelihood_weighting: bool = False,
  importance_sampling: bool = False,
  t_fixed: float | None = None,
) -> LossFn:
  """Sliced score matching on samples of p_t (Song et al. 2019, "Sliced Score Matching", Eq. 7-8).

  Per example, with v_1..v_M random projections (E[v v^T] = I) and J = ds/dx at x_t:
    SSM:    mean_m [ v_m^T J v_m + (v_m^T s)^2 / 2 ],
    SSM-VR: mean_m [ v_m^T J v_m ] + ||s||^2 / 2   (the variance-reduced form, Eq. 9),
  each an unbiased estimate of ISM's ||s||^2 / 2 + tr J. v^T J v comes from one `jax.jvp` per
  projection. Times, perturbation and weighting lambda(t) are those of `dsm_loss`, but only samples
  of p_t are used, never the conditional score.

  Args:
    n_projections: projections per example (M).
    projection: a registered projection name ("rademacher", "gaussian") or a function
      `(key, shape, dtype) -> v`.
    variance_reduction: SSM-VR instead of SSM.
    Others as in `dsm_loss`.
  """
  if int(n_projections) < 1:
    raise ValueError(f"config.training.n_projections = {n_projections} must be at least 1.")
  draw_v = PROJECTIONS.get(projection) if isinstance(projection, str) else projection

  def per_example(params, noised, key, score_kwargs):
    x, t = noised.x, noised.t
    f = lambda y: score_fn(params, y, t, **score_kwargs)
    v = draw_v(key, (int(n_projections),) + x.shape, x.dtype)
    score, jvp = jax.linearize(f, x)
    vjv = jnp.mean(jax.vmap(sum_except_batch)(v * jax.vmap(jvp)(v)), axis=0)  # [B]
    if variance_reduction:
      half_sum = vjv + 0.5 * sum_except_batch(jnp.square(score))
    else:
      vs = jax.vmap(sum_except_batch)(v * score)
      half_sum = vjv + 0.5 * jnp.mean(jnp.square(vs), axis=0)
    return noised.weight * noised.std**2 * half_sum

  return _perturbed_objective(
    sde,
    per_example,
    objective_key=True,
    train=train,
    reduce_mean=reduce_mean,
    eps=eps,
    likelihood_weighting=likelihood_weighting,
    importance_sampling=importance_sampling,
    t_fixed=t_fixed,
  )


@register_objective("ssm_vr")
def ssm_vr_loss(
  sde,
  score_fn: ScoreFn,
  *,
  train: bool,
  n_projections: int = 1,
  projection: str | Callable[..., jax.Array] = "rademacher",
  reduce_mean: bool = True,
  eps: float = 1e-5,
  likelihood_weighting: bool = False,
  importance_sampling: bool = False,
  t_fixed: float | None = None,
) -> LossFn:
  """Variance-reduced sliced score matching (Song et al. 2019, Eq. 9); see `ssm_loss`."""
  return ssm_loss(
    sde,
    score_fn,
    train=train,
    n_projections=n_projections,
    projection=projection,
    variance_reduction=True,
    reduce_mean=reduce_mean,
    eps=eps,
    likelihood_weighting=likelihood_weighting,
    importance_sampling=importance_sampling,
    t_fixed=t_fixed,
  )


@register_objective("ism")
def ism_loss(
  sde,
  score_fn: ScoreFn,
  *,
  train: bool,
  max_dim: int = 128,
  reduce_mean: bool = True,
  eps: float = 1e-5,
  likelihood_weighting: bool = False,
  importance_sampling: bool = False,
  t_fixed: float | None = None,
) -> LossFn:
  """Implicit score matching (Hyvarinen 2005, Thm. 1) on samples of p_t, with the exact trace.

  Per example ||s||^2 / 2 + tr(ds/dx) at x_t, weighted by lambda(t) as in `dsm_loss`. The trace
  needs D Jacobian-vector products (forward mode, as `jax.jacfwd`), so it is for small D only.

  Args:
    max_dim: the largest data dimension D accepted.
    Others as in `dsm_loss`.
  """

  def per_example(params, noised, key, score_kwargs):
    del key
    x, t = noised.x, noised.t
    dim = _event_dim(x)
    if dim > max_dim:
      raise ValueError(
        f"Objective 'ism' computes an exact D x D Jacobian trace; D = {dim} exceeds its limit "
        f"max_dim = {max_dim}. Use config.training.objective = 'ssm' or 'ssm_vr' (its unbiased "
        "sliced estimate) for high-dimensional data."
      )
    f = lambda y: score_fn(params, y, t, **score_kwargs)
    basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
    tangents = jnp.broadcast_to(basis, (dim,) + x.shape)
    # One jvp per basis vector e_k, applied to every example at once (examples do not interact).
    score, jvp = jax.linearize(f, x)
    trace = jnp.sum(jax.vmap(sum_except_batch)(tangents * jax.vmap(jvp)(tangents)), axis=0)
    half_sum = 0.5 * sum_except_batch(jnp.square(score)) + trace
    return noised.weight * noised.std**2 * half_sum

  # An unused objective key: given one rng, ISM and SSM also share the score's dropout key.
  return _perturbed_objective(
    sde,
    per_example,
    objective_key=True,
    train=train,
    reduce_mean=reduce_mean,
    eps=eps,
    likelihood_weighting=likelihood_weighting,
    importance_sampling=importance_sampling,
    t_fixed=t_fixed,
  )


@register_objective("esm")
def esm_loss(
  sde,
  score_fn: ScoreFn,
  *,
  train: bool,
  true_score_fn: ScoreFn | None,
  reduce_mean: bool = True,
  eps: float = 1e-5,
  likelihood_weighting: bool = False,
  importance_sampling: bool = False,
  t_fixed: float | None = None,
) -> LossFn:
  """Explicit score matching ||s - s_true||^2 / 2 against the known score of p_t (Hyvarinen 2005, Eq. 2).

  For teaching and tests: `true_score_fn` (same signature as `score_fn`, its params argument
  receives the model's params and may ignore them) gives grad log p_t. Weighting and sampling as in
  `dsm_loss`.
  """
  if true_score_fn is None:
    raise ValueError(
      "config.training.objective = 'esm' regresses onto a known score: pass true_score_fn "
      "(e.g. closed_form.gaussian_score_fn) to get_loss_fn."
    )

  def per_example(params, noised, key, score_kwargs):
    del key
    score = score_fn(params, noised.x, noised.t, **score_kwargs)
    target = jax.lax.stop_gradient(true_score_fn(params, noised.x, noised.t))
    half_sum = 0.5 * sum_except_batch(jnp.square(score - target))
    return noised.weight * noised.std**2 * half_sum

  # An unused objective key, as in ISM.
  return _perturbed_objective(
    sde,
    per_example,
    objective_key=True,
    train=train,
    reduce_mean=reduce_mean,
    eps=eps,
    likelihood_weighting=likelihood_weighting,
    importance_sampling=importance_sampling,
    t_fixed=t_fixed,
  )


# --- The config edge ----------------------------------------------------------------------------


def get_loss_fn(
  config: Any, sde, score_fn: ScoreFn, *, train: bool, true_score_fn: ScoreFn | None = None
) -> LossFn:
  """Builds the objective `config.training.objective` with its options from `config.training`.

  Reads objective, continuous, reduce_mean, likelihood_weighting, importance_sampling, eps,
  n_projections, projection, sigma, and the optional t_fixed (a fixed time for the continuous
  objectives; absent or None: t ~ U(eps, T)). Each factory receives the values its signature takes;
  an option switched on that the objective does not take is an error naming the field.

  Args:
    config: the experiment config.
    sde: the forward SDE.
    score_fn: the model's score function (`models.utils.get_score_fn`).
    train: whether the loss is for training (dropout on) or evaluation.
    true_score_fn: the known score, for objective 'esm'.
  """
  training = config.training
  name = str(training.objective)
  factory = OBJECTIVES.get(name)
  if not bool(training.continuous) and name.lower() not in ("smld", "ddpm"):
    raise ValueError(
      f"config.training.continuous = False trains on the SDE's discrete noise levels, which only "
      f"objectives 'smld' (VE) and 'ddpm' (VP) do; config.training.objective is {name!r}."
    )
  values = {
    "train": train,
    "reduce_mean": bool(training.reduce_mean),
    "eps": float(training.eps),
    "likelihood_weighting": bool(training.likelihood_weighting),
    "importance_sampling": bool(training.importance_sampling),
    "t_fixed": None if training.get("t_fixed") is None else float(training.t_fixed),
    # Options of the sliced / single-noise objectives; the paper's configs do not carry them.
    "n_projections": int(training.get("n_projections", 1)),
    "projection": str(training.get("projection", "rademacher")),
    "sigma": float(training.get("sigma", 0.1)),
    "true_score_fn": true_score_fn,
  }
  params = inspect.signature(factory).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    params = values  # A factory taking **kwargs receives every option.
  for option in ("likelihood_weighting", "importance_sampling", "t_fixed"):
    value = values[option]
    if value is not None and value is not False and option not in params:
      raise ValueError(
        f"config.training.{option} = {value} is not supported by objective {name!r}."
      )
  if "projection" in params and values["projection"] not in PROJECTIONS:
    PROJECTIONS.get(values["projection"])  # Raises, naming the field and the choices.
  kwargs = {k: v for k, v in values.items() if k in params and k not in ("sde", "score_fn")}
  return factory(sde, score_fn, **kwargs)


# --- Optimizer ----------------------------------------------------------------------------------


def get_lr_schedule(config_optim: Any) -> optax.Schedule:
  """Learning rate at step k: lr min(k / warmup, 1), the reference's linear warm-up from 0."""
  lr, warmup = float(config_optim.lr), int(config_optim.warmup)
  if warmup > 0:
    return optax.linear_schedule(0.0, lr, warmup)
  return optax.constant_schedule(lr)


@register_optimizer("adam")
def _adam(schedule, config_optim) -> optax.GradientTransformation:
  # The reference's flax.optim.Adam decays weights decoupled from the gradient, as AdamW does.
  if float(config_optim.get("weight_decay", 0.0)):
    return _adamw(schedule, config_optim)
  return optax.adam(
    schedule,
    b1=float(config_optim.beta1),
    b2=float(config_optim.get("beta2", 0.999)),
    eps=float(config_optim.eps),
  )


@register_optimizer("adamw")
def _adamw(schedule, config_optim) -> optax.GradientTransformation:
  return optax.adamw(
    schedule,
    b1=float(config_optim.beta1),
    b2=float(config_optim.get("beta2", 0.999)),
    eps=float(config_optim.eps),
    weight_decay=float(config_optim.get("weight_decay", 0.0)),
  )


def get_optimizer(config_optim: Any) -> optax.GradientTransformation:
  """The optax chain of `config.optim`: clip_by_global_norm(grad_clip) (off if < 0), then the optimizer.

  `config_optim.optimizer` names a registered optimizer ("Adam", "AdamW"); its learning rate follows
  `get_lr_schedule` (linear warm-up over `warmup` steps).
  """
  make = OPTIMIZERS.get(str(config_optim.optimizer))
  optimizer = make(get_lr_schedule(config_optim), config_optim)
  grad_clip = float(config_optim.grad_clip)
  if grad_clip >= 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), optimizer)
  return optimizer


# --- Train state and steps ----------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """What training carries from step to step; a pytree that orbax saves and restores as is.

  Attributes:
    step: int32 scalar, the number of updates applied.
    params: the model parameters.
    opt_state: the optax state.
    ema_params: exponential moving average of `params`, used for evaluation and sampling.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any

  def replace(self, **changes: Any) -> TrainState:
    return dataclasses.replace(self, **changes)


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0 with the EMA equal to (a copy of) `params`."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    ema_params=jax.tree.map(jnp.array, params),
  )


def _step_key(rng: jax.Array, step: jax.Array, axis_name: str | None) -> jax.Array:
  """Per-step, per-device key fold_in(fold_in(rng, step), device) (VDM style)."""
  key = jax.random.fold_in(rng, step)
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  return key


def _pmean(tree: Any, axis_name: str | None) -> Any:
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def get_step_fn(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  ema_rate: float,
  axis_name: str | None = None,
  lr_schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
  """Builds the pure per-device train step `step(state, batch, rng) -> (state, metrics)`.

  The step's key is `rng` folded with `state.step` (and with the device index over `axis_name`),
  so one base key serves a whole run. Gradients of the mean loss on this device's batch are
  averaged over `axis_name` with `lax.pmean` (equal to the full-batch gradient when shards are equal
  in size); with `axis_name=None` the step runs unmapped. Then the optax update and the EMA
  ema <- ema_rate ema + (1 - ema_rate) params (on the new params).

  Args:
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)`.
    optimizer: e.g. `get_optimizer(config.optim)`.
    ema_rate: the EMA decay (config.model.ema_rate).
    axis_name: the mapped device axis (parallel.AXIS), or None.
    lr_schedule: if given, metrics include the learning rate used by this step.

  Returns:
    `step`; metrics are {"loss", "grad_norm" (of the averaged gradient, before clipping), "lr"},
    identical on every device.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch, rng):
    key = _step_key(rng, state.step, axis_name)
    (loss, _), grads = grad_fn(state.params, batch, key)
    loss, grads = _pmean((loss, grads), axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = jax.tree.map(
      lambda ema, p: ema_rate * ema + (1.0 - ema_rate) * p, state.ema_params, params
    )
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    if lr_schedule is not None:
      metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    new_state = TrainState(
      step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
    )
    return new_state, metrics

  return step


def get_eval_step_fn(
  loss_fn: LossFn, axis_name: str | None = None
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], dict]:
  """Builds `eval_step(state, batch, rng) -> {"loss"}`: the loss of the EMA params, averaged over
  `axis_name` if given; keys are derived as in `get_step_fn`."""

  def eval_step(state: TrainState, batch, rng):
    key = _step_key(rng, state.step, axis_name)
    loss, _ = loss_fn(state.ema_params, batch, key)
    return {"loss": _pmean(loss, axis_name)}

  return eval_step


def get_multi_step_fn(
  step: Callable, n_steps: int, unroll: bool | int = True
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
  """Runs `n_steps` steps in one call over batches stacked on a leading axis of size n_steps.

  A `lax.scan` (the reference's n_jitted_steps). It is unrolled by default: on CPU a rolled scan
  around convolution gradients runs about 18x slower (ENVIRONMENT.md).

  Returns:
    `multi_step(state, batches [n_steps, B, ...], rng) -> (state, metrics [n_steps])`.
  """

  def multi_step(state, batches, rng):
    leading = {x.shape[0] for x in jax.tree.leaves(batches)}
    if leading != {n_steps}:
      raise ValueError(
        f"multi_step expects batches with a leading axis of n_steps = {n_steps} "
        f"(config.training.n_jitted_steps); got leading sizes {sorted(leading)}."
      )
    if n_steps == 1:
      # A scan of length 1 is a rolled while loop even with unroll=True (that is unroll=1): the
      # slow path on CPU (about 30x here, benchmarks/train_throughput.py). Run the step itself.
      state, metrics = step(state, jax.tree.map(lambda b: b[0], batches), rng)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, b: step(s, b, rng), state, batches, unroll=unroll)

  return multi_step
