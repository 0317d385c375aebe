"""Samplers: predictors, correctors, the PC sampler, the probability-flow ODE sampler, Langevin dynamics.

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021
(arXiv:2011.13456): predictor-corrector (PC) sampling (Alg. 1-3, App. G), the Langevin corrector with
its signal-to-noise step-size rule (Alg. 4) and annealed Langevin dynamics as a corrector (Alg. 5),
the probability-flow ODE (Eq. 13). Song & Ermon, "Generative Modeling by Estimating Gradients of the
Data Distribution", NeurIPS 2019 (NCSN): Langevin dynamics (Eq. 4) and annealed Langevin dynamics
(Alg. 1).

Every sampler needs only a score: `score_fn(params, x, t, *, train=False, rng=None)` (DESIGN.md),
bound to its parameters inside `sample`. It asks the SDE what it needs through the SDE's methods
(`reverse`, `ancestral_step`, `langevin_alpha`, `marginal_prob`, `prior_sampling`), never by its class.

Randomness is per example. Example i of a call draws everything (its prior sample and every noise
of every step) from its own key `fold_in(key, first_index + i)`, so a sample depends only on the
key and its global index, not on the batch it was drawn in nor on how the batch is split over
devices. Predictors and correctors therefore receive a batch of keys `key` [B] and draw noise with
`normal(key, x)`. Every sampler built here is `sample(key, params, first_index=0) -> (x, nfe)`:

  - on one device, `sample(key, params)` draws examples 0 .. B-1 (B = shape[0]);
  - per device, a sampler built for the per-device shape [B / devices, ...] draws examples
    first_index .. first_index + B / devices - 1 with first_index = axis_index * B / devices;
    `data_parallel_sampler` does exactly that over every device with `parallel.data_parallel`, and
    its output equals the one-device output with the same key;
  - under `jax.pmap(..., axis_name=name)` pass `first_index = lax.axis_index(name) * per_device`.

The ODE sampler solves each example's ODE with its own adaptive steps for the same reason (an
error norm over the batch would make the steps of one example depend on the others). The one
batch statistic is the Langevin corrector's step size (Alg. 4), which averages norms over the whole
batch as the reference does (`batch_mean`; across devices under `data_parallel_sampler`): its
samples are the same on 1 or 8 devices up to float round-off, but depend on the batch size.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import functools
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import parallel
from utils import Registry, batch_mul, check_eps

ScoreFn = Callable[..., jax.Array]
"""score_fn(params, x [B, ...], t [B], *, train=False, rng=None) -> [B, ...]."""
BoundScore = Callable[[jax.Array, jax.Array], jax.Array]
"""A score bound to its parameters: score(x [B, ...], t [B]) -> [B, ...]."""
SampleFn = Callable[..., tuple[jax.Array, jax.Array]]
"""sample(key, params, first_index=0) -> (x [B, ...], nfe [])."""

PREDICTORS: Registry[type[Predictor]] = Registry("predictor", "config.sampling.predictor")
CORRECTORS: Registry[type[Corrector]] = Registry("corrector", "config.sampling.corrector")
SAMPLING_METHODS: Registry[Callable[..., SampleFn]] = Registry(
  "sampling method", "config.sampling.method"
)
ODE_SOLVERS: Registry[type[diffrax.AbstractSolver]] = Registry(
  "ODE solver", "config.sampling.ode_solver"
)
register_predictor = PREDICTORS.register
register_corrector = CORRECTORS.register

for _solver in (diffrax.Dopri5, diffrax.Tsit5, diffrax.Bosh3, diffrax.Heun, diffrax.Dopri8):
  ODE_SOLVERS.register()(_solver)
del _solver


# --- Per-example randomness. ---------------------------------------------------------------------


def example_keys(key: jax.Array, batch_size: int, first_index: int | jax.Array = 0) -> jax.Array:
  """Per-example keys [B]: `fold_in(key, first_index + i)` for i in 0 .. batch_size - 1."""
  indices = jnp.asarray(first_index, jnp.uint32) + jnp.arange(batch_size, dtype=jnp.uint32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def fold_in(key: jax.Array, data: int | jax.Array) -> jax.Array:
  """Folds the same `data` (a step index) into each per-example key of `key` [B]."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, data)


def split(key: jax.Array, num: int = 2) -> tuple[jax.Array, ...]:
  """Splits each per-example key of `key` [B] into `num` new ones: `num` arrays of keys [B]."""
  keys = jax.vmap(functools.partial(jax.random.split, num=num))(key)
  return tuple(keys[:, j] for j in range(num))


def normal(key: jax.Array, x: jax.Array) -> jax.Array:
  """Standard normal noise like `x` [B, ...], example i drawn from its own key `key[i]`."""
  return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)


def prior_sample(sde, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """x_T ~ p_T of shape `shape` = [B, ...], example i drawn from `key[i]`."""
  return jax.vmap(lambda k: sde.prior_sampling(k, (1, *shape[1:]))[0])(key)


_BATCH_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_axis", default=None)


@contextlib.contextmanager
def batch_axis(axis_name: str | None):
  """Within this context, `batch_mean` also averages over the devices of the mapped axis `axis_name`.

  `data_parallel_sampler` traces the sampler inside `batch_axis(parallel.AXIS)`; under
  `jax.pmap(..., axis_name=name)`, call the sampler inside `batch_axis(name)`. Pass the sampler
  un-jitted: a trace made outside the context would be reused without the collective.
  """
  token = _BATCH_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BATCH_AXIS.reset(token)


def batch_mean(v: jax.Array) -> jax.Array:
  """Mean of per-example values v [B] over the whole batch, across devices inside `batch_axis`.

  With equal shares per device, the mean of the per-device means is the mean over the global batch,
  so the result does not depend on how the batch is split (up to float round-off).
  """
  mean = jnp.mean(v)
  axis_name = _BATCH_AXIS.get()
  return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def _per_example_norm(x: jax.Array) -> jax.Array:
  """Euclidean norm of each example of `x` [B, ...] -> [B]."""
  return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


# --- Predictors. ---------------------------------------------------------------------------------


class Predictor(abc.ABC):
  """One step of a numerical solver of the reverse-time SDE from t to t - T / N (P in Alg. 1-3).

  Built inside `sample` with the score bound to the parameters. A new predictor is a subclass
  registered with `@register_predictor("name")` and selected by `config.sampling.predictor`.

  Args:
    sde: the forward SDE.
    score: score(x [B, ...], t [B]) -> [B, ...].
    probability_flow: step the probability-flow ODE (Eq. 13) instead of the reverse SDE (Eq. 6).
  """

  nfe: int = 1
  """Score evaluations per `update`."""

  def __init__(self, sde, score: BoundScore, probability_flow: bool = False):
    self.sde = sde
    self.score = score
    self.probability_flow = probability_flow
    self.rsde = sde.reverse(score, probability_flow)

  @abc.abstractmethod
  def update(self, key: jax.Array, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step from time t [B]; `key` holds one key per example [B].

    Returns:
      x [B, ...] after the step, and x_mean [B, ...], the same step without its noise.
    """


@register_predictor("euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
  """Euler-Maruyama on the reverse SDE with step dt = T / N (Song et al. 2021, App. G):

  x_mean = x - [f(x, t) - g(t)^2 score(x, t)] dt,   x = x_mean + g(t) sqrt(dt) z.
  """

  def update(self, key, x, t):
    dt = self.sde.T / self.sde.N
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x - drift * dt
    x = x_mean + batch_mul(diffusion * np.sqrt(dt), normal(key, x))
    return x, x_mean


@register_predictor("reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
  """Reverse diffusion: the forward discretisation x_{i+1} = x_i + f_i + G_i z run backwards (Eq. 46):

  x_mean = x - f_i(x) + G_i^2 score(x, t),   x = x_mean + G_i z.
  """

  def update(self, key, x, t):
    f, G = self.rsde.discretize(x, t)
    x_mean = x - f
    x = x_mean + batch_mul(G, normal(key, x))
    return x, x_mean


@register_predictor("ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the SDE's discrete Markov chain (DDPM for VP, Eq. 47 for VE).

  The step is the SDE's own `ancestral_step`; an SDE without a discrete chain raises its error.
  """

  def __init__(self, sde, score, probability_flow=False):
    if probability_flow:
      raise ValueError(
        "Ancestral sampling has no probability-flow form: set config.sampling.probability_flow = "
        "False or choose another config.sampling.predictor."
      )
    super().__init__(sde, score, probability_flow)

  def update(self, key, x, t):
    x_mean, std = self.sde.ancestral_step(x, t, self.score(x, t))
    x = x_mean + batch_mul(std, normal(key, x))
    return x, x_mean


@register_predictor("none")
class NonePredictor(Predictor):
  """No predictor: corrector-only sampling."""

  nfe = 0

  def update(self, key, x, t):
    return x, x


# --- Correctors. ---------------------------------------------------------------------------------


class Corrector(abc.ABC):
  """`n_steps` MCMC steps at time t that move x towards p_t (C in Alg. 1-3).

  A new corrector is a subclass registered with `@register_corrector("name")` and selected by
  `config.sampling.corrector`.

  Args:
    sde: the forward SDE.
    score: score(x [B, ...], t [B]) -> [B, ...].
    snr: the signal-to-noise ratio r that sets the step size.
    n_steps: steps per call.
  """

  def __init__(self, sde, score: BoundScore, snr: float, n_steps: int):
    if int(n_steps) < 0:
      raise ValueError(f"config.sampling.n_steps_each = {n_steps} must be >= 0.")
    self.sde = sde
    self.score = score
    self.snr = snr
    self.n_steps = int(n_steps)

  @property
  def nfe(self) -> int:
    """Score evaluations per `update`."""
    return self.n_steps

  @abc.abstractmethod
  def update(self, key: jax.Array, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`n_steps` steps at time t [B]; `key` holds one key per example [B]; returns (x, x_mean)."""


class _LangevinBase(Corrector):
  """Langevin steps x_mean = x + e score(x, t), x = x_mean + sqrt(2 e) z with a per-example e [B]."""

  @abc.abstractmethod
  def step_size(self, score: jax.Array, z: jax.Array, t: jax.Array) -> jax.Array:
    """The step size e [B] of one step, given the score [B, ...] and the noise z [B, ...]."""

  def update(self, key, x, t):
    def body(j, state):
      x, _ = state
      score = self.score(x, t)
      z = normal(fold_in(key, j), x)
      step = self.step_size(score, z, t)
      x_mean = x + batch_mul(step, score)
      x = x_mean + batch_mul(jnp.sqrt(2.0 * step), z)
      return x, x_mean

    return jax.lax.fori_loop(0, self.n_steps, body, (x, x))


@register_corrector("langevin")
class LangevinCorrector(_LangevinBase):
  """Langevin corrector with the step size of Song et al. 2021, Alg. 4:

  e = 2 alpha_i (r mean ||z|| / mean ||score||)^2,   alpha_i = sde.langevin_alpha(t),

  the norms per example, averaged over the whole batch of the call (with `batch_mean`: over every
  device under `data_parallel_sampler`), as the reference code does; so e is the same for every
  example, and a sample does not depend on how the batch is split over devices. See
  `PerExampleLangevinCorrector` for why the norms are not taken per example.
  """

  def step_size(self, score, z, t):
    ratio = self.snr * batch_mean(_per_example_norm(z)) / batch_mean(_per_example_norm(score))
    return 2.0 * self.sde.langevin_alpha(t) * ratio**2


@register_corrector("langevin_per_example")
class PerExampleLangevinCorrector(_LangevinBase):
  """Langevin corrector with Alg. 4's step size taken literally per example:

  e(x) = 2 alpha_i (r ||z|| / ||score(x)||)^2.

  Beware: e then depends on x, and Langevin dynamics with a state-dependent step e(x) leaves
  p / e invariant instead of p (Fokker-Planck), here p ||score||^2. For N(0, I_D) that inflates
  E||x||^2 from D to D + 2 in the small-step limit (the discrete chain, whose steps blow up where
  ||score|| is small, does worse: 12.5 for D = 8, tests/test_sampling_langevin.py): negligible for
  images (D in the thousands), badly wrong in low dimension. `LangevinCorrector` averages the norms
  over the batch instead.
  """

  def step_size(self, score, z, t):
    ratio = self.snr * _per_example_norm(z) / _per_example_norm(score)
    return 2.0 * self.sde.langevin_alpha(t) * ratio**2


@register_corrector("ald")
class AnnealedLangevinCorrector(_LangevinBase):
  """Annealed Langevin dynamics as a corrector (Song et al. 2021, Alg. 5; NCSN, Song & Ermon 2019):

  e = 2 alpha_i (r sigma_i)^2, with sigma_i the std of the perturbation kernel at t.
  """

  def step_size(self, score, z, t):
    std = self.sde.marginal_prob(jnp.zeros_like(z), t)[1]
    return 2.0 * self.sde.langevin_alpha(t) * (self.snr * std) ** 2


@register_corrector("none")
class NoneCorrector(Corrector):
  """No corrector: predictor-only sampling."""

  def __init__(self, sde, score, snr=0.0, n_steps=0):
    super().__init__(sde, score, snr, 0)

  def update(self, key, x, t):
    return x, x


# --- Time grids. ---------------------------------------------------------------------------------


def linear_timesteps(T: float, eps: float, N: int, dtype: Any = None) -> jax.Array:
  """N times from T down to eps, equally spaced [N] (the grid of Song et al. 2021, App. G)."""
  return jnp.linspace(T, eps, N, dtype=dtype)


# --- PC sampler. ---------------------------------------------------------------------------------


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"A sample shape is [batch, ...] with positive sizes; got {shape}.")
  return shape


def _abstract_keys(batch_size: int) -> jax.ShapeDtypeStruct:
  return jax.eval_shape(lambda: example_keys(jax.random.key(0), batch_size))


def get_pc_sampler(
  sde,
  score_fn: ScoreFn,
  shape: tuple[int, ...],
  predictor: type[Predictor],
  corrector: type[Corrector],
  inverse_scaler: Callable[[jax.Array], jax.Array],
  snr: float,
  n_steps: int = 1,
  probability_flow: bool = False,
  noise_removal: bool = True,
  eps: float = 1e-3,
  timesteps: Callable[..., jax.Array] = linear_timesteps,
) -> SampleFn:
  """The predictor-corrector sampler (Song et al. 2021, Alg. 1-3).

  x_T ~ p_T; then at each of the N = sde.N times t_i of `timesteps(T, eps, N)`, from T down to
  eps: a corrector update at t_i, then a predictor update from t_i.

  Args:
    sde: the forward SDE.
    score_fn: score_fn(params, x, t, *, train=False, rng=None).
    shape: the shape of one call's batch of samples, [B, ...].
    predictor: a `Predictor` class (e.g. `PREDICTORS.get("reverse_diffusion")`).
    corrector: a `Corrector` class.
    inverse_scaler: maps the model's data space to the output space.
    snr: the corrector's signal-to-noise ratio r.
    n_steps: corrector steps per time.
    probability_flow: let the predictor step the probability-flow ODE.
    noise_removal: return the last update's x_mean (its step without noise) instead of x.
    eps: the last time reached, in (0, T).
    timesteps: timesteps(T, eps, N, dtype) -> the N times [N], from T down to eps.

  Returns:
    `sample(key, params, first_index=0) -> (x [B, ...], nfe)`, jit-able, where example i draws
    from `fold_in(key, first_index + i)` and nfe = N (predictor.nfe + corrector.nfe) counts the
    score evaluations on the batch (N (n_steps + 1) for a predictor and a corrector that both
    evaluate it; the reference code reports that figure even when one of them is "none").
  """
  shape = _check_shape(shape)
  check_eps(eps, sde.T, "eps")
  N = sde.N

  def build(score):
    return predictor(sde, score, probability_flow), corrector(sde, score, snr, n_steps)

  def sample(key: jax.Array, params: Any, first_index: int | jax.Array = 0):
    predictor_, corrector_ = build(functools.partial(score_fn, params))
    keys = example_keys(key, shape[0], first_index)
    prior_keys, step_keys = split(keys)
    x = prior_sample(sde, prior_keys, shape)
    times = timesteps(sde.T, eps, N, x.dtype)

    def body(i, state):
      x, _ = state
      t = jnp.full((shape[0],), times[i], x.dtype)
      corrector_keys, predictor_keys = split(fold_in(step_keys, i))
      x, x_mean = corrector_.update(corrector_keys, x, t)
      x, x_mean = predictor_.update(predictor_keys, x, t)
      return x, x_mean

    x, x_mean = jax.lax.fori_loop(0, N, body, (x, x))
    nfe = N * (predictor_.nfe + corrector_.nfe)
    return inverse_scaler(x_mean if noise_removal else x), jnp.asarray(nfe, jnp.int32)

  # Build the pieces and trace one step abstractly now, so that a bad combination (ancestral
  # sampling of an SDE without a chain, the probability-flow form of ancestral sampling) fails here.
  predictor_, corrector_ = build(lambda x, t: jnp.zeros_like(x))
  x = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
  t = jax.ShapeDtypeStruct(shape[:1], x.dtype)
  jax.eval_shape(predictor_.update, _abstract_keys(shape[0]), x, t)
  jax.eval_shape(corrector_.update, _abstract_keys(shape[0]), x, t)
  return sample


# --- Probability-flow ODE. -----------------------------------------------------------------------


def _solver_evaluations(solver: diffrax.AbstractSolver) -> tuple[int, int]:
  """(evaluations before the first step, evaluations per step attempt) of an explicit RK solver.

  A first-same-as-last (FSAL) tableau evaluates the vector field once at t0 and then
  num_stages - 1 times per attempted step (accepted or rejected); otherwise num_stages times per
  step. (diffrax 0.7.2 with an explicit dt0, as `probability_flow` passes; tests check the count.)
  """
  tableau = getattr(solver, "tableau", None)
  if not isinstance(tableau, diffrax.ButcherTableau):
    raise ValueError(
      f"The ODE sampler counts function evaluations from a Butcher tableau; {type(solver).__name__} "
      f"has none. Choose config.sampling.ode_solver from: {', '.join(ODE_SOLVERS.names())}."
    )
  fsal = int(bool(tableau.fsal))
  return fsal, tableau.num_stages - fsal


def probability_flow(
  sde,
  score: BoundScore,
  x: jax.Array,
  t0: float,
  t1: float,
  *,
  solver: diffrax.AbstractSolver | None = None,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  max_steps: int = 4096,
) -> tuple[jax.Array, jax.Array]:
  """Solves the probability-flow ODE dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 (Eq. 13) from t0 to t1.

  The drift is `sde.reverse(score, probability_flow=True).sde`, the one formula the likelihood uses
  too. Each example is solved with its own adaptive steps (diffrax, PID controller with `rtol`,
  `atol`; first step (t1 - t0) / 100), in-graph and vmapped over the batch, so a solution does not
  depend on the other examples of the batch.

  Args:
    sde: the forward SDE.
    score: score(x [B, ...], t [B]) -> [B, ...].
    x: the state at t0 [B, ...].
    t0, t1: start and end times (t0 > t1 integrates towards the data).
    solver: an explicit Runge-Kutta diffrax solver (default Dopri5, RK45 as in the reference).
    rtol, atol: the step-size controller's tolerances.
    max_steps: the most steps any example may take (more is an error).

  Returns:
    x at t1 [B, ...], and nfe []: the number of times the drift was evaluated on the batch. The
    vmapped solve runs until the slowest example is done, so nfe = n0 + k * max_i(steps_i), with
    steps_i the step attempts (accepted and rejected) of example i and (n0, k) the solver's
    evaluations before the first step and per step (Dopri5: 1 and 6).
  """
  solver = diffrax.Dopri5() if solver is None else solver
  initial_evaluations, evaluations_per_step = _solver_evaluations(solver)
  drift = sde.reverse(score, probability_flow=True).sde

  def vector_field(t, y, args):
    del args
    return drift(y[None], jnp.full((1,), t, y.dtype))[0][0]

  def solve_one(y0):
    solution = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field),
      solver,
      t0,
      t1,
      (t1 - t0) / 100,
      y0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True),
      max_steps=max_steps,
    )
    return solution.ys[0], solution.stats["num_steps"]

  y1, num_steps = jax.vmap(solve_one)(x)
  nfe = initial_evaluations + evaluations_per_step * jnp.max(num_steps)
  return y1, nfe.astype(jnp.int32)


def prior_to_data(sde, score: BoundScore, z: jax.Array, eps: float, **solver_options):
  """Maps prior samples z [B, ...] at T to data at eps along the probability flow; (x, nfe)."""
  return probability_flow(sde, score, z, sde.T, eps, **solver_options)


def data_to_prior(sde, score: BoundScore, x: jax.Array, eps: float, **solver_options):
  """Maps data x [B, ...] at eps to the prior at T along the probability flow; (z, nfe)."""
  return probability_flow(sde, score, x, eps, sde.T, **solver_options)


def get_ode_sampler(
  sde,
  score_fn: ScoreFn,
  shape: tuple[int, ...],
  inverse_scaler: Callable[[jax.Array], jax.Array],
  *,
  solver: diffrax.AbstractSolver | None = None,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  noise_removal: bool = False,
  eps: float = 1e-3,
  max_steps: int = 4096,
) -> SampleFn:
  """The probability-flow ODE sampler (Song et al. 2021, Sec. 4.3): x_T ~ p_T, solved from T to eps.

  Args:
    sde, score_fn, shape, inverse_scaler, eps: as for `get_pc_sampler`.
    solver, rtol, atol, max_steps: as for `probability_flow`.
    noise_removal: finish with one reverse-diffusion step at eps without its noise (as the
      reference does), one more score evaluation.

  Returns:
    `sample(key, params, first_index=0) -> (x [B, ...], nfe)`; example i's prior sample comes from
    `fold_in(key, first_index + i)` exactly as in the PC sampler, so both samplers start from the
    same x_T given the same key. nfe is as in `probability_flow`, plus one with noise removal.
  """
  shape = _check_shape(shape)
  check_eps(eps, sde.T, "eps")
  _solver_evaluations(diffrax.Dopri5() if solver is None else solver)
  solver_options = dict(solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)

  def sample(key: jax.Array, params: Any, first_index: int | jax.Array = 0):
    score = functools.partial(score_fn, params)
    prior_keys, denoise_keys = split(example_keys(key, shape[0], first_index))
    z = prior_sample(sde, prior_keys, shape)
    x, nfe = prior_to_data(sde, score, z, eps, **solver_options)
    if noise_removal:
      t = jnp.full((shape[0],), eps, x.dtype)
      _, x = ReverseDiffusionPredictor(sde, score).update(denoise_keys, x, t)
      nfe = nfe + 1
    return inverse_scaler(x), nfe

  return sample


# --- Langevin dynamics on fixed noise levels (NCSN). ----------------------------------------------


def _langevin_chain(key, score, x, step_size, n_steps):
  """n_steps of x <- x + step_size / 2 score(x) + sqrt(step_size) z, per-example keys [B]."""

  def body(k, x):
    z = normal(fold_in(key, k), x)
    return x + (step_size / 2) * score(x) + jnp.sqrt(step_size) * z

  return jax.lax.fori_loop(0, n_steps, body, x)


def langevin_dynamics(
  key: jax.Array,
  score: Callable[[jax.Array], jax.Array],
  x: jax.Array,
  step_size: float,
  n_steps: int,
  first_index: int | jax.Array = 0,
) -> jax.Array:
  """Langevin dynamics for a fixed distribution (Song & Ermon 2019, Eq. 4):

  x_k = x_{k-1} + (step_size / 2) score(x_{k-1}) + sqrt(step_size) z_k,  z_k ~ N(0, I).

  Args:
    key: the key of the call; example i draws from `fold_in(key, first_index + i)`.
    score: score(x [B, ...]) -> [B, ...], the score of the target.
    x: the initial points [B, ...].
    step_size: the step size epsilon.
    n_steps: the number of steps.
    first_index: the global index of the first example.

  Returns:
    x after `n_steps` steps [B, ...].
  """
  keys = example_keys(key, x.shape[0], first_index)
  return _langevin_chain(keys, score, x, step_size, n_steps)


def annealed_langevin_dynamics(
  key: jax.Array,
  score: Callable[[jax.Array, jax.Array], jax.Array],
  x: jax.Array,
  sigmas: jax.Array,
  step_lr: float,
  n_steps_each: int,
  *,
  noise_removal: bool = False,
  first_index: int | jax.Array = 0,
) -> jax.Array:
  """Annealed Langevin dynamics over the noise levels sigma_1 > ... > sigma_L (NCSN, Alg. 1).

  At level i, `n_steps_each` Langevin steps on the score of the data perturbed with N(0, sigma_i^2 I)
  with step size alpha_i = step_lr sigma_i^2 / sigma_L^2.

  Args:
    key: the key of the call; example i draws from `fold_in(key, first_index + i)`.
    score: score(x [B, ...], sigma [B]) -> [B, ...], the score of the data perturbed at sigma.
    x: the initial points [B, ...] (NCSN starts from uniform noise).
    sigmas: the noise levels [L], decreasing.
    step_lr: epsilon of Alg. 1.
    n_steps_each: T of Alg. 1, steps per level.
    noise_removal: finish with the denoising step x + sigma_L^2 score(x, sigma_L) (Tweedie's
      formula, as NCSNv2 does; Song & Ermon 2020).
    first_index: the global index of the first example.

  Returns:
    The final points [B, ...].
  """
  sigmas = jnp.asarray(sigmas, x.dtype)
  keys = example_keys(key, x.shape[0], first_index)

  def level(x, inputs):
    i, sigma = inputs
    vec_sigma = jnp.full((x.shape[0],), sigma, x.dtype)
    step_size = step_lr * (sigma / sigmas[-1]) ** 2
    x = _langevin_chain(fold_in(keys, i), lambda y: score(y, vec_sigma), x, step_size, n_steps_each)
    return x, None

  x, _ = jax.lax.scan(level, x, (jnp.arange(sigmas.shape[0]), sigmas))
  if noise_removal:
    x = x + sigmas[-1] ** 2 * score(x, jnp.full((x.shape[0],), sigmas[-1], x.dtype))
  return x


# --- Data parallelism. ---------------------------------------------------------------------------


def data_parallel_sampler(sample: SampleFn, per_device_batch: int) -> Callable[..., Any]:
  """Runs a sampler on every device, each drawing its own examples; jitted.

  Args:
    sample: a sampler built for the per-device shape [per_device_batch, ...].
    per_device_batch: its batch size.

  Returns:
    `sample(key, params) -> (x [devices * per_device_batch, ...], nfe)`, `x` a global array split
    over the devices along its first axis. Device d draws examples d * per_device_batch onwards,
    so `x` equals what one sampler built for the whole batch draws with the same key. nfe is the
    largest over the devices (they differ only for the adaptive ODE solver), which is the number
    the one-device run reports.
  """

  def per_device(key, params):
    first_index = jax.lax.axis_index(parallel.AXIS) * per_device_batch
    with batch_axis(parallel.AXIS):
      x, nfe = sample(key, params, first_index)
    return x, jax.lax.pmax(nfe, parallel.AXIS)

  return parallel.data_parallel(
    per_device,
    in_specs=(parallel.REPLICATED, parallel.REPLICATED),
    out_specs=(parallel.SHARDED, parallel.REPLICATED),
  )


# --- The config edge. ----------------------------------------------------------------------------


@SAMPLING_METHODS.register("pc")
def _pc_sampler_from_config(sampling, sde, score_fn, shape, inverse_scaler, eps):
  return get_pc_sampler(
    sde,
    score_fn,
    shape,
    PREDICTORS.get(sampling.predictor),
    CORRECTORS.get(sampling.corrector),
    inverse_scaler,
    snr=float(sampling.snr),
    n_steps=int(sampling.n_steps_each),
    probability_flow=bool(sampling.probability_flow),
    noise_removal=bool(sampling.noise_removal),
    eps=eps,
  )


@SAMPLING_METHODS.register("ode")
def _ode_sampler_from_config(sampling, sde, score_fn, shape, inverse_scaler, eps):
  return get_ode_sampler(
    sde,
    score_fn,
    shape,
    inverse_scaler,
    solver=ODE_SOLVERS.get(sampling.ode_solver)(),
    rtol=float(sampling.ode_rtol),
    atol=float(sampling.ode_atol),
    noise_removal=bool(sampling.noise_removal),
    eps=eps,
  )


def get_sampler(
  config,
  sde,
  score_fn: ScoreFn,
  shape: tuple[int, ...],
  inverse_scaler: Callable[[jax.Array], jax.Array],
  eps: float,
) -> SampleFn:
  """Builds the sampler that `config.sampling` describes.

  Reads config.sampling: method ("pc" | "ode", or a registered `SAMPLING_METHODS` builder);
  for "pc" predictor, corrector, snr, n_steps_each, noise_removal, probability_flow; for "ode"
  ode_solver, ode_rtol, ode_atol, noise_removal.

  Args:
    config: the experiment's config.
    sde: the forward SDE.
    score_fn: score_fn(params, x, t, *, train=False, rng=None).
    shape: one call's batch shape [B, ...] (the per-device shape under `data_parallel_sampler`).
    inverse_scaler: maps the model's data space to the output space.
    eps: the last time reached (usually config.sampling.eps), in (0, T).

  Returns:
    `sample(key, params, first_index=0) -> (x, nfe)`, jit-able; see the module docstring.
  """
  check_eps(eps, sde.T, "config.sampling.eps")
  builder = SAMPLING_METHODS.get(config.sampling.method)
  return builder(config.sampling, sde, score_fn, shape, inverse_scaler, eps)
