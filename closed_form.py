"""Closed-form scores and densities of Gaussian and Gaussian-mixture data under any SDE.

If x0 ~ N(mu, Sigma) and the SDE's perturbation kernel is x_t = a(t) x0 + std(t) z (true of every
built-in SDE), then x_t ~ N(a mu, a^2 Sigma + std^2 I): its score and density are known exactly, and
so are those of a mixture of such Gaussians. These are `score_fn`s in the sense of DESIGN.md (the
`params` argument is ignored), so every sampler, likelihood and objective can be checked against exact
answers, and they make good teaching examples.

Event shapes: data are [B, *event_shape]; means are given flattened, [D] with D = prod(event_shape),
covariances [D, D].
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def mean_coeff_and_std(sde, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """a(t) [B] and std(t) [B] of the kernel x_t = a(t) x0 + std(t) z of `sde`."""
  ones = jnp.ones((t.shape[0], 1), t.dtype)
  mean, std = sde.marginal_prob(ones, t)
  return mean[:, 0], std


def _gaussian_parts(sde, t, mean, cov):
  """Mean [B, D], precision [B, D, D] and log-determinant [B] of p_t for N(mean, cov) data."""
  a, std = mean_coeff_and_std(sde, t)
  d = mean.shape[-1]
  cov_t = a[:, None, None] ** 2 * cov + std[:, None, None] ** 2 * jnp.eye(d, dtype=cov.dtype)
  chol = jnp.linalg.cholesky(cov_t)
  logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
  return a[:, None] * mean, chol, logdet


def _gaussian_logp_and_score(x_flat, mean_t, chol, logdet):
  """log N(x; mean_t, L L^T) [B] and its gradient [B, D] from the Cholesky factor L."""
  diff = x_flat - mean_t
  white = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
  d = x_flat.shape[-1]
  logp = -0.5 * (d * np.log(2 * np.pi) + logdet + jnp.sum(white**2, axis=-1))
  score = -jax.scipy.linalg.solve_triangular(
    jnp.swapaxes(chol, -1, -2), white[..., None], lower=False
  )[..., 0]
  return logp, score


def gaussian_mixture_logp_and_score(
  sde, weights: jax.Array, means: jax.Array, covs: jax.Array
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """log p_t(x) [B] and score [B, ...] of the mixture sum_k w_k N(means[k], covs[k]) under `sde`.

  Args:
    sde: any SDE whose perturbation kernel is x_t = a(t) x0 + std(t) z.
    weights: [K] mixture weights, summing to one.
    means: [K, D] component means.
    covs: [K, D, D] component covariances.

  Returns:
    `fn(x [B, ...], t [B]) -> (logp [B], score [B, ...])`.
  """
  weights = jnp.asarray(weights)
  means = jnp.asarray(means)
  covs = jnp.asarray(covs)

  def fn(x, t):
    x_flat = x.reshape(x.shape[0], -1).astype(means.dtype)
    t = t.astype(means.dtype)

    def component(mean, cov):
      mean_t, chol, logdet = _gaussian_parts(sde, t, mean, cov)
      return _gaussian_logp_and_score(x_flat, mean_t, chol, logdet)

    logps, scores = jax.vmap(component, out_axes=(1, 1))(means, covs)  # [B, K], [B, K, D]
    joint = logps + jnp.log(weights)
    logp = jax.scipy.special.logsumexp(joint, axis=1)
    responsibilities = jnp.exp(joint - logp[:, None])
    score = jnp.einsum("bk,bkd->bd", responsibilities, scores)
    return logp, score.reshape(x.shape).astype(x.dtype)

  return fn


def gaussian_mixture_score_fn(sde, weights, means, covs):
  """The mixture's exact score as `score_fn(params, x, t, *, train=False, rng=None)` (params unused)."""
  logp_and_score = gaussian_mixture_logp_and_score(sde, weights, means, covs)

  def score_fn(params, x, t, *, train=False, rng=None):
    del params, train, rng
    return logp_and_score(x, t)[1]

  return score_fn


def gaussian_score_fn(sde, mean: jax.Array, cov: jax.Array):
  """Exact score of N(mean [D], cov [D, D]) data under `sde`, as a `score_fn` (params unused)."""
  mean = jnp.asarray(mean)
  return gaussian_mixture_score_fn(
    sde, jnp.ones((1,), mean.dtype), mean[None], jnp.asarray(cov)[None]
  )


def gaussian_logp(sde, mean: jax.Array, cov: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
  """Exact log p_t(x) [B] of N(mean, cov) data under `sde` (t = 0 gives the data density)."""
  mean = jnp.asarray(mean)
  fn = gaussian_mixture_logp_and_score(
    sde, jnp.ones((1,), mean.dtype), mean[None], jnp.asarray(cov)[None]
  )
  return fn(x, t)[0]
