"""Building blocks of NCSN++ / DDPM++ (Song et al. 2021, App. H).

Compared with DDPM's blocks (models/layers.py): group normalisation with min(C // 4, 32) groups,
optional 1/sqrt(2) rescaling of residual sums (`skip_rescale`), FIR up/down-sampling (StyleGAN2),
BigGAN-style residual blocks that resample inside the block, random Fourier features of the noise
level, and `Combine` for the progressive input pyramid.

Module and parameter names follow the reference code's creation order (see models/layers.py), so
released checkpoints map onto these trees name by name. The one difference: the fixed random
Fourier weights live in the `"constants"` collection (not `"params"`), so that they are not trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from models import up_or_down_sampling as uds
from models.layers import (
  NIN,
  Activation,
  conv1x1,
  conv3x3,
  default_init,
  group_norm,
  rescale_sum,
  spatial_attention,
)

FOURIER_COLLECTION = "constants"


def num_groups_for(channels: int) -> int:
  """NCSN++'s group count for `channels` features: min(channels // 4, 32)."""
  return min(channels // 4, 32)


def _fixed_fourier_weights(seed: int, size: int, scale: float) -> jax.Array:
  return scale * jax.random.normal(jax.random.key(seed), (size,), jnp.float32)


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar (Tancik et al. 2020; Song et al. 2021, App. H).

  emb = [sin(2 pi x W), cos(2 pi x W)] with W ~ N(0, scale^2 I) drawn once and never trained.

  W is the variable `W` of the `"constants"` collection. When that collection is not passed to
  `apply` (the usual `model.apply({"params": p}, ...)`), W is re-drawn from the fixed key `seed`,
  the same values `init` stores; passing `{"params": p, "constants": c}` uses the stored values
  instead (e.g. the weights of an imported released checkpoint).

  Attributes:
    embedding_size: number of frequencies; the embedding has 2 * embedding_size features.
    scale: standard deviation of the frequencies.
    seed: the key W is drawn from.
  """

  embedding_size: int = 256
  scale: float = 1.0
  seed: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B] -> [B, 2 * embedding_size]."""

    def draw() -> jax.Array:
      return _fixed_fourier_weights(self.seed, self.embedding_size, self.scale)

    if self.has_variable(FOURIER_COLLECTION, "W") or self.is_mutable_collection(FOURIER_COLLECTION):
      w = self.variable(FOURIER_COLLECTION, "W", draw).value
    else:
      w = draw()
    w = jax.lax.stop_gradient(w)
    x_proj = x[:, None] * w[None, :] * (2 * np.pi)
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
  """Merges the input pyramid x into features y: 1x1 conv of x (Conv_0), then concat or sum.

  Attributes:
    method: "cat" ([B, H, W, 2C]) or "sum" ([B, H, W, C]).
  """

  method: str = "cat"

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """x [B, H, W, C_x], y [B, H, W, C] -> [B, H, W, 2C] (cat) or [B, H, W, C] (sum)."""
    h = conv1x1(x, y.shape[-1])
    if self.method == "cat":
      return jnp.concatenate([h, y], axis=-1)
    if self.method == "sum":
      return h + y
    raise ValueError(
      f"Unknown config.model.progressive_combine {self.method!r}. Valid choices: cat, sum."
    )


class AttnBlockpp(nn.Module):
  """Self-attention block of NCSN++: DDPM's, with min(C // 4, 32) groups and `skip_rescale`.

  Submodules: GroupNorm_0, NIN_0 (q), NIN_1 (k), NIN_2 (v), NIN_3 (output, `init_scale`).
  """

  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, C]."""
    channels = x.shape[-1]
    h = group_norm(num_groups_for(channels))(x)
    q = NIN(channels)(h)
    k = NIN(channels)(h)
    v = NIN(channels)(h)
    h = NIN(channels, init_scale=self.init_scale)(spatial_attention(x, q, k, v))
    return rescale_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
  """Up-sampling by 2: nearest or FIR, with an optional 3x3 convolution to `out_ch` channels.

  With `fir` and `with_conv`, the FIR up-sampling and the convolution are fused (`Conv2d_0`);
  without `fir`, the convolution is `Conv_0`.
  """

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, out_ch or C]."""
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      h = uds.naive_upsample_2d(x, factor=2)
      if self.with_conv:
        h = conv3x3(h, out_ch)
    elif not self.with_conv:
      h = uds.upsample_2d(x, self.fir_kernel, factor=2)
    else:
      h = uds.Conv2d(
        out_ch, kernel_size=3, up=True, resample_kernel=self.fir_kernel, kernel_init=default_init()
      )(x)
    return h


class Downsample(nn.Module):
  """Down-sampling by 2: average pooling or FIR, with an optional 3x3 convolution to `out_ch`.

  With `fir` and `with_conv` the convolution and the FIR down-sampling are fused (`Conv2d_0`);
  without `fir` the convolution has stride 2 (`Conv_0`).
  """

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, out_ch or C]."""
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      if self.with_conv:
        return conv3x3(x, out_ch, stride=2)
      return uds.naive_downsample_2d(x, factor=2)
    if not self.with_conv:
      return uds.downsample_2d(x, self.fir_kernel, factor=2)
    return uds.Conv2d(
      out_ch, kernel_size=3, down=True, resample_kernel=self.fir_kernel, kernel_init=default_init()
    )(x)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM's residual block with min(C // 4, 32) groups, `init_scale` and `skip_rescale`.

  Submodules in order: GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, then Conv_2
  (`conv_shortcut`) or NIN_0 when the channel count changes.
  """

  act: Activation
  out_ch: int | None = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = True):
    """x [B, H, W, C], temb [B, D] or None -> [B, H, W, out_ch]."""
    channels = x.shape[-1]
    out_ch = self.out_ch or channels
    h = self.act(group_norm(num_groups_for(channels))(x))
    h = conv3x3(h, out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(num_groups_for(out_ch))(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if channels != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return rescale_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN-style residual block (Brock et al. 2019) that can resample by 2 inside the block.

  h = act(norm(x)), resampled (FIR or nearest / average); h = conv(h) + Dense(act(temb));
  h = conv_init_scale(dropout(act(norm(h)))); the shortcut resamples x the same way and maps it
  with a 1x1 conv when resampling or changing channels.
  Submodules in order: GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, Conv_2 (shortcut).
  """

  act: Activation
  up: bool = False
  down: bool = False
  out_ch: int | None = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0

  def _resample(self, x: jax.Array) -> jax.Array:
    if self.up:
      if self.fir:
        return uds.upsample_2d(x, self.fir_kernel, factor=2)
      return uds.naive_upsample_2d(x, factor=2)
    if self.down:
      if self.fir:
        return uds.downsample_2d(x, self.fir_kernel, factor=2)
      return uds.naive_downsample_2d(x, factor=2)
    return x

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = True):
    """x [B, H, W, C], temb [B, D] or None -> [B, H', W', out_ch], H' = 2H / H / H/2."""
    channels = x.shape[-1]
    out_ch = self.out_ch or channels
    h = self.act(group_norm(num_groups_for(channels))(x))
    h = self._resample(h)
    x = self._resample(x)
    h = conv3x3(h, out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(num_groups_for(out_ch))(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if channels != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch)
    return rescale_sum(x, h, self.skip_rescale)
