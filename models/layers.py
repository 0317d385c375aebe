"""Building blocks of the DDPM U-Net (Ho et al. 2020) shared with NCSN++ (models/layerspp.py).

Conventions, kept so that parameter trees line up with the score-SDE reference code's (Flax
auto-names in creation order: `Conv_0`, `Dense_0`, `GroupNorm_1`, `NIN_2/W`, ...):
- the convolution helpers `conv3x3` / `conv1x1` create an `nn.Conv` in the *calling* module's
  scope, so a block's convolutions are numbered `Conv_0, Conv_1, ...` in the order they are used;
- initialisation is DDPM's: `default_init(scale)`, variance scaling with fan_avg and a uniform
  distribution, zero biases; a scale of 0 becomes 1e-10 (a near-zero, still random, last layer);
- group normalisation is `GroupNorm` below (flax's maths and parameters, computed faster; epsilon
  1e-6), parameters `scale` and `bias` of shape [C]. Checkpoints written by the flax of the reference code (0.3) store them as [1, 1, 1, C].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: dict[str, Activation] = {
  "elu": nn.elu,
  "relu": nn.relu,
  "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
  "swish": nn.swish,
}


def get_act(name: str) -> Activation:
  """The activation named by `config.model.nonlinearity` (elu, relu, lrelu (slope 0.2), swish)."""
  key = str(name).lower()
  if key not in ACTIVATIONS:
    raise ValueError(
      f"Unknown config.model.nonlinearity {name!r}. Valid choices: {', '.join(ACTIVATIONS)}."
    )
  return ACTIVATIONS[key]


def default_init(scale: float = 1.0) -> Callable[..., jax.Array]:
  """DDPM initialisation: variance scaling (fan_avg, uniform) with variance `scale` (0 -> 1e-10)."""
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def conv3x3(
  x: jax.Array,
  features: int,
  stride: int = 1,
  use_bias: bool = True,
  dilation: int = 1,
  init_scale: float = 1.0,
) -> jax.Array:
  """A 3x3 'SAME' convolution with DDPM initialisation, created in the calling module's scope.

  Args:
    x: [B, H, W, C].
    features: output channels.

  Returns:
    [B, H / stride, W / stride, features].
  """
  return nn.Conv(
    features,
    kernel_size=(3, 3),
    strides=(stride, stride),
    padding="SAME",
    use_bias=use_bias,
    kernel_dilation=(dilation, dilation),
    kernel_init=default_init(init_scale),
    bias_init=nn.initializers.zeros,
  )(x)


def conv1x1(
  x: jax.Array, features: int, stride: int = 1, use_bias: bool = True, init_scale: float = 1.0
) -> jax.Array:
  """A 1x1 convolution with DDPM initialisation, created in the calling module's scope."""
  return nn.Conv(
    features,
    kernel_size=(1, 1),
    strides=(stride, stride),
    padding="SAME",
    use_bias=use_bias,
    kernel_init=default_init(init_scale),
    bias_init=nn.initializers.zeros,
  )(x)


class GroupNorm(nn.Module):
  """Group normalisation of NHWC arrays (Wu & He, 2018), a drop-in for `flax.linen.GroupNorm`.

  y = (x - mean_g) / sqrt(var_g + epsilon) * scale + bias, with mean_g and var_g taken over the
  height, width and the channels of each group g, per example. Parameters `scale` (ones) and
  `bias` (zeros) of shape (C,), as flax's, so parameter trees and checkpoints are unchanged.

  Computed channel-first: per-channel sums of x and x^2 over the pixels (a contiguous reduction),
  then per-group statistics from those (C numbers per example), then one multiply-add per element
  with per-(example, channel) coefficients. The variance is E[x^2] - mean^2, as flax's default
  (`use_fast_variance`). Flax's version reduces over a 5-D view of non-adjacent axes, which
  XLA's CPU backend runs several times slower; the two agree to float32 round-off
  (tests/test_layers.py). On the reduced DDPM++ shapes this one ran 1.2-4.7x faster forward and
  1.4-1.8x forward + backward on 2 idle cores (benchmarks/group_norm.py).
  """

  num_groups: int
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f"GroupNorm: {self.num_groups} groups do not divide {channels} channels.")
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    batch, per_group = x.shape[0], channels // self.num_groups
    pixels = x.reshape(batch, -1, channels)
    count = pixels.shape[1] * per_group
    mean = jnp.sum(pixels, axis=1).reshape(batch, self.num_groups, per_group).sum(-1) / count
    mean_sq = jnp.sum(jnp.square(pixels), axis=1)
    mean_sq = mean_sq.reshape(batch, self.num_groups, per_group).sum(-1) / count
    rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    a = jnp.repeat(rstd, per_group, axis=1) * scale  # (batch, C)
    b = bias - jnp.repeat(mean, per_group, axis=1) * a
    shape = (batch,) + (1,) * (x.ndim - 2) + (channels,)
    return x * a.reshape(shape) + b.reshape(shape)


def group_norm(num_groups: int) -> GroupNorm:
  """Group normalisation with `num_groups` groups and epsilon 1e-6 (the reference's)."""
  return GroupNorm(num_groups=num_groups, epsilon=1e-6)


def get_timestep_embedding(
  timesteps: jax.Array, embedding_dim: int, max_positions: int = 10_000
) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) time steps (Vaswani et al. 2017; DDPM).

  emb[:, j] = sin(t w_j), emb[:, half + j] = cos(t w_j), w_j = max_positions^(-j / (half - 1)),
  half = embedding_dim // 2; an odd `embedding_dim` gets a trailing zero column.

  Args:
    timesteps: [B] (integer levels or real numbers).

  Returns:
    [B, embedding_dim] float32.
  """
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape [B]; got {timesteps.shape}.")
  half = embedding_dim // 2
  frequencies = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [(0, 0), (0, 1)])
  return emb


class NIN(nn.Module):
  """A per-pixel linear map ("network in network"): y = x W + b over the channel axis.

  Parameters `W` [C_in, num_units] (DDPM init with `init_scale`) and `b` [num_units] (zeros).
  """

  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[..., C_in] -> [..., num_units]."""
    w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    return jnp.tensordot(x, w, axes=1) + b


def spatial_attention(x: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Single-head self-attention over the H x W positions.

  Args:
    x: [B, H, W, C], only for its shape.
    q, k, v: queries, keys, values [B, H, W, C].

  Returns:
    softmax(q k^T / sqrt(C)) v, [B, H, W, C].
  """
  batch, height, width, channels = x.shape
  q = q.reshape(batch, height * width, channels)
  k = k.reshape(batch, height * width, channels)
  v = v.reshape(batch, height * width, channels)
  logits = jnp.einsum("bic,bjc->bij", q, k) * (channels**-0.5)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bij,bjc->bic", weights, v).reshape(batch, height, width, channels)


class AttnBlock(nn.Module):
  """DDPM self-attention block: x + NIN(attention(GroupNorm(x))), output projection zero-init.

  Submodules: GroupNorm_0, NIN_0 (q), NIN_1 (k), NIN_2 (v), NIN_3 (output).
  """

  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, C]."""
    channels = x.shape[-1]
    h = group_norm(self.num_groups)(x)
    q = NIN(channels)(h)
    k = NIN(channels)(h)
    v = NIN(channels)(h)
    h = NIN(channels, init_scale=0.0)(spatial_attention(x, q, k, v))
    return x + h


class Upsample(nn.Module):
  """Nearest-neighbour up-sampling by 2, optionally followed by a 3x3 convolution (Conv_0)."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C]."""
    h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      h = conv3x3(h, x.shape[-1])
    return h


class Downsample(nn.Module):
  """Down-sampling by 2: a stride-2 3x3 convolution (Conv_0) or 2x2 average pooling."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, C]."""
    if self.with_conv:
      return conv3x3(x, x.shape[-1], stride=2)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block: two GroupNorm-act-conv stages, a time-embedding bias, dropout.

  h = conv(act(norm(x))) + Dense(act(temb)); h = conv_0init(dropout(act(norm(h)))); return
  shortcut(x) + h, the shortcut being a 3x3 conv (`conv_shortcut`) or NIN when channels change.
  Submodules in order: GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, then Conv_2 or NIN_0.
  """

  act: Activation
  out_ch: int | None = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = True):
    """x [B, H, W, C], temb [B, D] or None -> [B, H, W, out_ch]."""
    channels = x.shape[-1]
    out_ch = self.out_ch or channels
    h = self.act(group_norm(self.num_groups)(x))
    h = conv3x3(h, out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(self.num_groups)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=0.0)
    if channels != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h


def rescale_sum(x: jax.Array, h: jax.Array, skip_rescale: bool) -> jax.Array:
  """x + h, divided by sqrt(2) when `skip_rescale` (keeps the variance of a sum of two unit signals)."""
  return (x + h) / np.sqrt(2.0) if skip_rescale else x + h


# --- Configuration checks shared by the U-Nets (NCSN++ / DDPM++ and DDPM). ----------------------


def check_choice(value: str, choices: tuple[str, ...], field: str) -> None:
  """Raises a ValueError naming `field` when `value` is not one of `choices`."""
  if value not in choices:
    raise ValueError(f"Unknown {field} {value!r}. Valid choices: {', '.join(choices)}.")


def unet_resolutions(image_size: int, ch_mult: tuple[int, ...]) -> tuple[int, ...]:
  """The feature-map sizes of a U-Net that halves `image_size` len(ch_mult) - 1 times.

  Raises:
    ValueError naming config.data.image_size when it cannot be halved that many times.
  """
  if len(ch_mult) == 0:
    raise ValueError("config.model.ch_mult must list at least one channel multiplier.")
  steps = len(ch_mult) - 1
  if image_size < 1 or image_size % (2**steps) != 0:
    raise ValueError(
      f"config.data.image_size = {image_size} cannot be halved {steps} times, as "
      f"config.model.ch_mult = {tuple(ch_mult)} ({len(ch_mult)} resolutions) requires: use a "
      f"multiple of {2**steps} or fewer entries in ch_mult."
    )
  return tuple(image_size // 2**i for i in range(len(ch_mult)))


def check_attn_resolutions(attn_resolutions: tuple[int, ...], resolutions: tuple[int, ...]):
  """Raises a ValueError naming config.model.attn_resolutions if one of them never occurs."""
  missing = [r for r in attn_resolutions if r not in resolutions]
  if missing:
    raise ValueError(
      f"config.model.attn_resolutions = {tuple(attn_resolutions)}: resolution(s) {missing} never "
      f"occur in this network. Valid choices: {', '.join(map(str, resolutions))}."
    )


def check_input_shape(x: jax.Array, image_size: int, num_channels: int) -> None:
  """Raises a ValueError if x is not [B, image_size, image_size, num_channels]."""
  if x.ndim != 4 or tuple(x.shape[1:]) != (image_size, image_size, num_channels):
    raise ValueError(
      f"Input of shape {tuple(x.shape)} does not match config.data.image_size = {image_size} and "
      f"config.data.num_channels = {num_channels} (expected [B, {image_size}, {image_size}, "
      f"{num_channels}])."
    )


def discrete_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> jax.Array:
  """The N geometric noise levels of SMLD / the VE SDE, from sigma_max (index 0) to sigma_min. [N]"""
  return jnp.exp(jnp.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


def noise_level_fields(config, needed: bool) -> dict:
  """sigma_min, sigma_max and num_scales from config.sde, for networks that divide by sigma_i.

  Args:
    config: the full config.
    needed: whether the network uses them (scale_by_sigma with a discrete level index as input).

  Raises:
    ValueError naming config.sde.<field> when `needed` and a field is missing.
  """
  names = {"sigma_min": "sigma_min", "sigma_max": "sigma_max", "num_scales": "N"}
  sde = config.get("sde", {})
  fields = {}
  for field, key in names.items():
    if key in sde:
      fields[field] = sde[key]
    elif needed:
      raise ValueError(
        f"config.model.scale_by_sigma divides the output by the noise level sigma_i of the input "
        f"index, which needs config.sde.{key} (the VE SDE's sigma_min, sigma_max and N)."
      )
  return fields
