"""Normalisation layers of the RefineNet score networks (NCSN, NCSNv2), batch-free.

Every layer normalises each example on its own (instance or group statistics), so none keeps
running averages and the networks' variables are parameters only. All share the call signature
`layer(x, y=None)`: `x` is [B, H, W, C] and `y` [B] the integer noise-level index, which only the
conditional layers read. That lets one residual or refine block take any of them.

InstanceNorm++ (Song & Ermon 2019, App. A, Eq. 6) adds back the information about the channel
means that instance normalisation removes:

    z_k = gamma_k (x_k - mu_k) / s_k + beta_k + alpha_k (mu_k - m) / v,

with mu_k, s_k the spatial mean and standard deviation of channel k, and m, v the mean and
standard deviation of the mu_k across channels. As in the authors' code, s_k^2 is the biased
spatial variance, v^2 the unbiased variance across channels, and both get 1e-5 added. The
conditional version reads gamma, alpha and beta from an embedding of the noise-level index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers

_EPS = 1e-5  # as torch.nn.InstanceNorm2d and the NCSN code


def _near_one(stddev: float = 0.02) -> Callable[..., jax.Array]:
  """Initialiser N(1, stddev^2): scales start at the identity, slightly perturbed."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return 1.0 + stddev * jax.random.normal(key, shape, dtype)

  return init


def _instance_normalise(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x - mu) / s per example and channel; also returns the channel means mu [B, C]."""
  means = jnp.mean(x, axis=(1, 2))
  variance = jnp.var(x, axis=(1, 2))
  h = (x - means[:, None, None, :]) * jax.lax.rsqrt(variance + _EPS)[:, None, None, :]
  return h, means


def _standardised_means(means: jax.Array) -> jax.Array:
  """(mu_k - m) / v across the channels of each example: [B, C] -> [B, C]."""
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True, ddof=1)
  return (means - m) * jax.lax.rsqrt(v + _EPS)


class InstanceNorm(nn.Module):
  """Instance normalisation with a learned per-channel scale and (optional) bias."""

  bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    del y
    h, _ = _instance_normalise(x)
    h = h * self.param("scale", nn.initializers.ones, (x.shape[-1],))
    if self.bias:
      h = h + self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return h


class InstanceNormPlus(nn.Module):
  """InstanceNorm++ (Song & Ermon 2019, Eq. 6) with learned alpha, gamma (~ N(1, 0.02^2)), beta."""

  bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    del y
    channels = x.shape[-1]
    h, means = _instance_normalise(x)
    alpha = self.param("alpha", _near_one(), (channels,))
    gamma = self.param("gamma", _near_one(), (channels,))
    h = h + (_standardised_means(means) * alpha)[:, None, None, :]
    h = gamma * h
    if self.bias:
      h = h + self.param("beta", nn.initializers.zeros, (channels,))
    return h


class VarianceNorm(nn.Module):
  """Divides each channel by its spatial standard deviation (no centring), learned scale."""

  bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    del y
    h = x * jax.lax.rsqrt(jnp.var(x, axis=(1, 2), keepdims=True) + _EPS)
    h = h * self.param("scale", _near_one(), (x.shape[-1],))
    if self.bias:
      h = h + self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return h


class GroupNorm(nn.Module):
  """Group normalisation with min(C // 4, 32) groups (epsilon 1e-5), for the RefineNet blocks."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    del y
    groups = max(min(x.shape[-1] // 4, 32), 1)
    return layers.GroupNorm(num_groups=groups, epsilon=_EPS, name="group_norm")(x)


class _ConditionalNorm(nn.Module):
  """Base of the layers whose affine parameters are looked up by the noise-level index y."""

  num_classes: int
  bias: bool = True

  def _embedding(self, y: jax.Array, channels: int, n_scales: int) -> list[jax.Array]:
    """The per-example parameters for index y [B]: `n_scales` scales (~ N(1, 0.02^2)), then a bias."""
    if y is None:
      raise ValueError(
        "A noise-conditional normalisation needs the noise-level index y; this network must be "
        "called with c_noise."
      )
    n_params = n_scales + int(self.bias)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
      scales = _near_one()(key, (shape[0], n_scales * channels), dtype)
      return jnp.concatenate([scales, jnp.zeros((shape[0], shape[1] - scales.shape[1]), dtype)], 1)

    table = nn.Embed(self.num_classes, n_params * channels, embedding_init=init, name="embed")
    return jnp.split(table(y), n_params, axis=-1)


class ConditionalInstanceNorm(_ConditionalNorm):
  """Instance normalisation with gamma (and beta) embedded from the noise-level index."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    h, _ = _instance_normalise(x)
    gamma, *beta = self._embedding(y, x.shape[-1], n_scales=1)
    h = gamma[:, None, None, :] * h
    return h + beta[0][:, None, None, :] if beta else h


class ConditionalInstanceNormPlus(_ConditionalNorm):
  """Conditional InstanceNorm++ (Song & Ermon 2019, Eq. 6): gamma, alpha, beta depend on y."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    h, means = _instance_normalise(x)
    gamma, alpha, *beta = self._embedding(y, x.shape[-1], n_scales=2)
    h = h + (_standardised_means(means) * alpha)[:, None, None, :]
    h = gamma[:, None, None, :] * h
    return h + beta[0][:, None, None, :] if beta else h


NORMALIZATIONS: dict[str, type[nn.Module]] = {
  "instancenorm": InstanceNorm,
  "instancenorm++": InstanceNormPlus,
  "variancenorm": VarianceNorm,
  "groupnorm": GroupNorm,
}
CONDITIONAL_NORMALIZATIONS: dict[str, type[_ConditionalNorm]] = {
  "instancenorm": ConditionalInstanceNorm,
  "instancenorm++": ConditionalInstanceNormPlus,
}


def get_normalization(
  name: str, conditional: bool = False, num_classes: int | None = None
) -> Callable[..., nn.Module]:
  """A factory of the normalisation named by `config.model.normalization`.

  Args:
    name: "InstanceNorm", "InstanceNorm++", "VarianceNorm" or "GroupNorm" (case-insensitive);
      conditional layers exist for "InstanceNorm" and "InstanceNorm++".
    conditional: embed the affine parameters from the noise-level index.
    num_classes: number of noise levels, for conditional layers.

  Returns:
    A callable creating a fresh layer (keyword arguments such as `name` pass through), called as
    `layer(x, y=None)`.

  Raises:
    ValueError naming config.model.normalization for an unknown or unsupported name.
  """
  key = str(name).lower()
  table = CONDITIONAL_NORMALIZATIONS if conditional else NORMALIZATIONS
  if key not in table:
    kind = "noise-conditional " if conditional else ""
    raise ValueError(
      f"Unknown {kind}normalization {name!r} in config.model.normalization. "
      f"Valid choices: {', '.join(sorted(table))}."
    )
  if conditional:
    if num_classes is None or num_classes < 1:
      raise ValueError("A noise-conditional normalization needs config.model.num_scales >= 1.")
    return functools.partial(table[key], num_classes=num_classes)
  return table[key]
