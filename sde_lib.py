"""Forward SDEs, their marginals, priors, discretisations and reverse-time processes.

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021
(arXiv:2011.13456). Equation numbers below refer to that paper.

Every SDE here has the form dx = f(x, t) dt + g(t) dw on t in [0, T] (Eq. 5). Its reverse-time SDE
(Eq. 6) and probability-flow ODE (Eq. 13) share one formula, `reverse_drift`, which the samplers and
the likelihood use.

A user's own SDE is a subclass of `SDE` registered under a name:

    @sde_lib.register_sde("my_sde")
    class MySDE(sde_lib.SDE):
      ...

and selected by `config.sde.name = "my_sde"`; the other fields of `config.sde` are its constructor
arguments (see `get_sde`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from utils import Registry, batch_mul, build_from_config, sum_except_batch

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
"""A score already bound to its parameters: score(x [B, ...], t [B]) -> [B, ...]."""

SDES: Registry[type[SDE]] = Registry("SDE", "config.sde.name")
register_sde = SDES.register


def get_sde(config: Mapping[str, Any]) -> SDE:
  """Builds the SDE named by `config['name']` with the other fields as constructor arguments.

  Args:
    config: usually `config.sde`, e.g. {"name": "vesde", "sigma_min": 0.01, "sigma_max": 50, "N": 1000}.
  """
  return build_from_config(SDES, config, "config.sde")


class SDE(abc.ABC):
  """A forward SDE dx = f(x, t) dt + g(t) dw on [0, T], discretised into `N` steps.

  Subclasses implement `sde`, `prior_sampling` and `prior_logp`, and `marginal_prob` where the
  perturbation kernel p_0t(x_t | x_0) is Gaussian (every objective and sampler that needs it says so).
  The remaining methods have general defaults that the built-in SDEs refine.
  """

  def __init__(self, N: int):
    if int(N) < 1:
      raise ValueError(f"config.sde.N = {N} must be a positive number of discretisation steps.")
    self.N = int(N)

  @property
  def T(self) -> float:
    """End time of the forward process."""
    return 1.0

  @abc.abstractmethod
  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Drift f(x, t) [B, ...] and diffusion g(t) [B] of the forward SDE (Eq. 5)."""

  def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean [B, ...] and std [B] of the Gaussian perturbation kernel p_0t(x_t | x_0)."""
    raise NotImplementedError(
      f"{type(self).__name__} has no Gaussian perturbation kernel (marginal_prob); objectives and "
      "samplers that perturb data in closed form need one. Implement marginal_prob or pick another SDE."
    )

  @abc.abstractmethod
  def prior_sampling(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Draws x_T ~ p_T, shape `shape`."""

  @abc.abstractmethod
  def prior_logp(self, z: jax.Array) -> jax.Array:
    """log p_T(z) per example: z [B, ...] -> [B]."""

  def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step x_{i+1} = x_i + f_i + G_i z_i of the discretised SDE; returns f [B, ...], G [B].

    The default is Euler-Maruyama with step T / N.
    """
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(jnp.asarray(dt, diffusion.dtype))

  def reverse(self, score: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
    """The reverse-time SDE (Eq. 6), or the probability-flow ODE (Eq. 13) if `probability_flow`."""
    return ReverseSDE(self, score, probability_flow)

  # --- What networks, samplers and objectives need to know about this SDE. -----------------------
  # Defaults suit any SDE with Gaussian marginals; the built-in SDEs refine them.

  def c_noise(self, t: jax.Array, continuous: bool = True) -> jax.Array:
    """The noise conditioning fed to a score network at time t [B] (default: 999 t / T).

    With `continuous=False` the network was trained on the N discrete noise levels; SDEs that have
    such levels override this.
    """
    if not continuous:
      raise NotImplementedError(
        f"{type(self).__name__} has no discrete noise levels; set config.training.continuous = True."
      )
    return 999.0 * t / self.T

  def output_to_score(
    self, output: jax.Array, x: jax.Array, t: jax.Array, continuous: bool = True
  ) -> jax.Array:
    """Maps a network's raw output to the score (default: noise prediction, -output / std(t))."""
    del continuous
    std = self.marginal_prob(jnp.zeros_like(x), t)[1]
    return batch_mul(-1.0 / std, output)

  def ancestral_step(
    self, x: jax.Array, t: jax.Array, score: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Mean [B, ...] and std [B] of one ancestral-sampling step from t to the previous level."""
    raise NotImplementedError(
      f"Ancestral sampling needs a discrete Markov chain, which {type(self).__name__} does not "
      "define (ancestral_step). Set config.sampling.predictor to 'reverse_diffusion' or "
      "'euler_maruyama'."
    )

  def langevin_alpha(self, t: jax.Array) -> jax.Array:
    """The alpha_i of the Langevin corrector's step size (Song et al. 2021, Alg. 4 and 5) [B]."""
    return jnp.ones_like(t)

  def reverse_drift(self, x: jax.Array, t: jax.Array, score: jax.Array, probability_flow: bool):
    """Drift of the reverse SDE, f - g^2 score (Eq. 6), or of the ODE, f - g^2 score / 2 (Eq. 13).

    Returns (drift [B, ...], diffusion [B]); the diffusion is zero for the ODE.
    """
    drift, diffusion = self.sde(x, t)
    weight = 0.5 if probability_flow else 1.0
    drift = drift - batch_mul(weight * diffusion**2, score)
    return drift, jnp.zeros_like(diffusion) if probability_flow else diffusion


class ReverseSDE:
  """The reverse-time process of `forward` given a score (Eq. 6), or its probability-flow ODE (Eq. 13).

  Runs from t = T down to t = 0; `sde` and `discretize` return the coefficients of that process in
  forward-time form, so a step from t to t - dt is x - drift * dt + diffusion * sqrt(dt) z.
  """

  def __init__(self, forward: SDE, score: ScoreFn, probability_flow: bool = False):
    self.forward = forward
    self.score = score
    self.probability_flow = probability_flow
    self.N = forward.N
    self.T = forward.T

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Drift [B, ...] and diffusion [B] of the reverse SDE / ODE."""
    return self.forward.reverse_drift(x, t, self.score(x, t), self.probability_flow)

  def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reverse of the forward discretisation: f - G^2 score (x 1/2 for the ODE), and G (0 for ODE)."""
    f, G = self.forward.discretize(x, t)
    weight = 0.5 if self.probability_flow else 1.0
    rev_f = f - batch_mul(weight * G**2, self.score(x, t))
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


def _standard_normal_logp(z: jax.Array, scale: float | jax.Array = 1.0) -> jax.Array:
  """log N(z; 0, scale^2 I) per example."""
  d = np.prod(z.shape[1:])
  return -0.5 * d * jnp.log(2 * np.pi * scale**2) - sum_except_batch(z**2) / (2 * scale**2)


def _discrete_index(t: jax.Array, N: int, T: float) -> jax.Array:
  """Index i of the discrete noise level at time t: floor(t (N-1) / T), as in the reference code."""
  return (t * (N - 1) / T).astype(jnp.int32)


@register_sde("vpsde")
class VPSDE(SDE):
  """Variance-preserving SDE, the continuous limit of DDPM (Eq. 11, App. B).

  dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw with beta(t) = beta_min + t (beta_max - beta_min).
  Its discretisation is the DDPM chain with betas linspace(beta_min / N, beta_max / N, N).
  """

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    super().__init__(N)
    if not 0 <= beta_min < beta_max:
      raise ValueError(
        f"config.sde.beta_min = {beta_min} and beta_max = {beta_max} need 0 <= beta_min < beta_max."
      )
    self.beta_0 = float(beta_min)
    self.beta_1 = float(beta_max)
    self.discrete_betas = jnp.linspace(beta_min / N, beta_max / N, N)
    self.alphas = 1.0 - self.discrete_betas
    self.alphas_cumprod = jnp.cumprod(self.alphas)
    self.sqrt_alphas_cumprod = jnp.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = jnp.sqrt(1.0 - self.alphas_cumprod)

  def _check_chain(self) -> None:
    """The DDPM chain needs every beta_i = linspace(beta_min, beta_max)_i / N below 1."""
    if self.beta_1 / self.N >= 1:
      raise ValueError(
        f"config.sde.N = {self.N} is too small for beta_max = {self.beta_1}: the DDPM chain's "
        f"largest step beta_max / N must be below 1 (use N > {int(self.beta_1)}), or sample with "
        "the 'euler_maruyama' predictor, which does not use the chain."
      )

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def _log_mean_coeff(self, t: jax.Array) -> jax.Array:
    """log of the marginal mean coefficient, -int_0^t beta(s) ds / 2."""
    return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def sde(self, x, t):
    beta_t = self.beta(t)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x0, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = batch_mul(jnp.exp(log_mean_coeff), x0)
    std = jnp.sqrt(-jnp.expm1(2.0 * log_mean_coeff))
    return mean, std

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z)

  def discretize(self, x, t):
    """DDPM step: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z_i (Eq. 2 of App. B)."""
    self._check_chain()
    i = _discrete_index(t, self.N, self.T)
    beta = self.discrete_betas[i].astype(x.dtype)
    alpha = self.alphas[i].astype(x.dtype)
    f = batch_mul(jnp.sqrt(alpha), x) - x
    return f, jnp.sqrt(beta)

  def c_noise(self, t, continuous=True):
    # Continuous-time models see 999 t; DDPM models the unrounded step index t (N - 1).
    return 999.0 * t if continuous else t * (self.N - 1)

  def output_to_score(self, output, x, t, continuous=True):
    if continuous:
      return super().output_to_score(output, x, t)
    std = self.sqrt_1m_alphas_cumprod[_discrete_index(t, self.N, self.T)].astype(output.dtype)
    return batch_mul(-1.0 / std, output)

  def ancestral_step(self, x, t, score):
    """DDPM ancestral step (Ho et al. 2020, Alg. 2): mean (x + beta score) / sqrt(1 - beta)."""
    self._check_chain()
    beta = self.discrete_betas[_discrete_index(t, self.N, self.T)].astype(x.dtype)
    x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
    return x_mean, jnp.sqrt(beta)

  def langevin_alpha(self, t):
    self._check_chain()
    return self.alphas[_discrete_index(t, self.N, self.T)].astype(t.dtype)


@register_sde("subvpsde")
class subVPSDE(VPSDE):
  """Sub-VP SDE (Eq. 15): the VP drift with diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta)))."""

  def sde(self, x, t):
    drift, _ = super().sde(x, t)
    # 1 - exp(-2 int_0^t beta); the log mean coefficient is -int_0^t beta / 2.
    discount = -jnp.expm1(4.0 * self._log_mean_coeff(t))
    return drift, jnp.sqrt(self.beta(t) * discount)

  def marginal_prob(self, x0, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = batch_mul(jnp.exp(log_mean_coeff), x0)
    std = -jnp.expm1(2.0 * log_mean_coeff)
    return mean, std

  def discretize(self, x, t):
    # The sub-VP SDE has no DDPM chain of its own: use Euler-Maruyama.
    return SDE.discretize(self, x, t)

  def c_noise(self, t, continuous=True):
    # sub-VP models are always conditioned on continuous time, as in the reference code.
    return 999.0 * t

  def output_to_score(self, output, x, t, continuous=True):
    return SDE.output_to_score(self, output, x, t)

  def ancestral_step(self, x, t, score):
    return SDE.ancestral_step(self, x, t, score)


@register_sde("vesde")
class VESDE(SDE):
  """Variance-exploding SDE, the continuous limit of SMLD / NCSN (Eq. 9, App. B).

  dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t.
  Its discretisation is the SMLD chain over N geometric noise levels.
  """

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise ValueError(
        f"config.sde.sigma_min = {sigma_min} and sigma_max = {sigma_max} need "
        "0 < sigma_min < sigma_max."
      )
    self.sigma_min = float(sigma_min)
    self.sigma_max = float(sigma_max)
    self.discrete_sigmas = jnp.exp(jnp.linspace(np.log(sigma_min), np.log(sigma_max), N))

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x0, t):
    return x0, self.sigma(t)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape) * self.sigma_max

  def prior_logp(self, z):
    return _standard_normal_logp(z, self.sigma_max)

  def _adjacent_sigmas(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    i = _discrete_index(t, self.N, self.T)
    sigma = self.discrete_sigmas[i].astype(t.dtype)
    previous = jnp.where(i == 0, 0.0, self.discrete_sigmas[jnp.maximum(i - 1, 0)]).astype(t.dtype)
    return sigma, previous

  def discretize(self, x, t):
    """SMLD step: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z_i (Eq. 1 of App. B)."""
    sigma, previous = self._adjacent_sigmas(t)
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - previous**2)

  def c_noise(self, t, continuous=True):
    # Continuous-time models see sigma(t); NCSN models the level index counted from sigma_max.
    if continuous:
      return self.sigma(t)
    return jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32)

  def output_to_score(self, output, x, t, continuous=True):
    # VE networks output the score itself (scaled by 1 / sigma inside the network if configured).
    return output

  def ancestral_step(self, x, t, score):
    """SMLD ancestral step (Song et al. 2021, Eq. 47)."""
    sigma, previous = self._adjacent_sigmas(t)
    x_mean = x + batch_mul(sigma**2 - previous**2, score)
    std = jnp.sqrt(previous**2 * (sigma**2 - previous**2) / sigma**2)
    return x_mean, std
