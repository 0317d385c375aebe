"""FIR up- and down-sampling of NHWC images, in pure JAX (Karras et al. 2020, StyleGAN2).

NCSN++ resamples feature maps with a finite-impulse-response (FIR) filter instead of nearest-neighbour
copies or average pooling (Song et al. 2021, App. H). Every operation here is one `upfirdn2d`:

  1. up-sample by inserting `up - 1` zeros after each pixel,
  2. pad with zeros (a negative pad crops),
  3. convolve with the 2-D filter k (a true convolution: k is flipped),
  4. keep every `down`-th pixel.

All of it is expressed as `lax.conv_general_dilated` (zero insertion is `lhs_dilation`, the stride is
`window_strides`), so it runs unchanged on CPU, GPU and TPU and is differentiable to any order.
Filters are given as 1-D separable taps (e.g. (1, 3, 3, 1), expanded to their outer product) or as a
2-D array, and are normalised to unit sum.

The fused variants (`upsample_conv_2d`, `conv_downsample_2d`) combine the resampling with a k x k
convolution and pad once, as StyleGAN2 does; for factor 2 they compute exactly what the score-SDE
reference code computes, so its trained weights give the same outputs here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")

Kernel = Sequence[float] | np.ndarray


def setup_kernel(k: Kernel) -> np.ndarray:
  """Returns the 2-D FIR filter for taps `k`, normalised to unit sum.

  Args:
    k: 1-D separable taps [n] (the filter is their outer product) or a 2-D filter [n, m].

  Returns:
    A float32 numpy array [n, n] (or [n, m]) whose entries sum to 1.
  """
  kernel = np.asarray(k, dtype=np.float32)
  if kernel.ndim == 1:
    kernel = np.outer(kernel, kernel)
  if kernel.ndim != 2 or kernel.size == 0:
    raise ValueError(f"A FIR filter must be 1-D taps or a 2-D array; got shape {kernel.shape}.")
  total = kernel.sum()
  if total == 0:
    raise ValueError("A FIR filter's taps must not sum to zero.")
  return kernel / total


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
  if len(pair) != 2 or any(int(v) < 1 for v in pair):
    raise ValueError(f"{name} must be a positive integer or a pair of them; got {value!r}.")
  return int(pair[0]), int(pair[1])


def upfirdn2d(
  x: jax.Array,
  kernel: Kernel | jax.Array,
  up: int | Sequence[int] = 1,
  down: int | Sequence[int] = 1,
  pad: Sequence[int] = (0, 0),
) -> jax.Array:
  """Pads, up-samples, FIR-filters and down-samples a batch of images (as scipy.signal.upfirdn).

  Output pixel i (per axis) is `sum_m u[m] k[i * down + (n - 1) - pad0 - m]`, where u is the input
  with `up - 1` zeros inserted after every pixel and n the filter length.

  Args:
    x: images [B, H, W, C].
    kernel: the 2-D filter [n_y, n_x], used as given (not normalised).
    up: zero-insertion factor, an int or (up_y, up_x).
    down: decimation factor, an int or (down_y, down_x).
    pad: (pad0, pad1) for both axes or (pad_y0, pad_y1, pad_x0, pad_x1); zeros added before and
      after the up-sampled image, negative values crop.

  Returns:
    [B, (H * up_y + pad_y0 + pad_y1 - n_y) // down_y + 1, (same along x), C].
  """
  up_y, up_x = _pair(up, "up")
  down_y, down_x = _pair(down, "down")
  pad = tuple(int(p) for p in pad)
  if len(pad) == 2:
    pad = pad + pad
  if len(pad) != 4:
    raise ValueError(f"pad must be (pad0, pad1) or (pad_y0, pad_y1, pad_x0, pad_x1); got {pad}.")
  pad_y0, pad_y1, pad_x0, pad_x1 = pad
  kernel = jnp.asarray(kernel, dtype=x.dtype)
  if kernel.ndim != 2:
    raise ValueError(f"upfirdn2d needs a 2-D filter; got shape {kernel.shape}.")
  channels = x.shape[-1]
  # A convolution (not a correlation): flip the filter, one copy per channel (depthwise).
  weight = jnp.broadcast_to(kernel[::-1, ::-1, None, None], (*kernel.shape, 1, channels))
  # lhs_dilation inserts up - 1 zeros *between* pixels; the trailing ones go into the high pad.
  padding = [(pad_y0, pad_y1 + up_y - 1), (pad_x0, pad_x1 + up_x - 1)]
  return lax.conv_general_dilated(
    x,
    weight,
    window_strides=(down_y, down_x),
    padding=padding,
    lhs_dilation=(up_y, up_x),
    dimension_numbers=_DIMENSIONS,
    feature_group_count=channels,
  )


def upsample_2d(x: jax.Array, k: Kernel = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0):
  """Up-samples images by `factor` with the FIR filter `k` (zero insertion, then filtering).

  The filter is scaled so a constant image stays constant (times `gain`) away from the border;
  `k = [1] * factor` is nearest-neighbour up-sampling.

  Args:
    x: [B, H, W, C].

  Returns:
    [B, H * factor, W * factor, C].
  """
  factor = _pair(factor, "factor")[0]
  kernel = setup_kernel(k) * (gain * factor**2)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: jax.Array, k: Kernel = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0):
  """Down-samples images by `factor` with the FIR filter `k` (filtering, then decimation).

  `k = [1] * factor` is average pooling over factor x factor blocks.

  Args:
    x: [B, H, W, C], H and W multiples of `factor`.

  Returns:
    [B, H // factor, W // factor, C].
  """
  factor = _pair(factor, "factor")[0]
  kernel = setup_kernel(k) * gain
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def _check_conv_weight(w: jax.Array) -> int:
  conv_h, conv_w = w.shape[:2]
  if w.ndim != 4 or conv_h != conv_w or conv_h % 2 == 0:
    raise ValueError(
      f"The convolution weight must be [k, k, C_in, C_out] with k odd; got {w.shape}."
    )
  return conv_h


def upsample_conv_2d(
  x: jax.Array, w: jax.Array, k: Kernel = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0
) -> jax.Array:
  """FIR up-sampling followed by a k x k convolution, fused so that zeros are padded only once.

  Away from the border this equals a 'SAME' convolution of `upsample_2d(x, k, factor)` with `w`;
  at the border the fused form keeps the filter's tails that the unfused form crops. It is a
  transposed (stride `factor`) convolution with `w`, then FIR filtering cropped to the output size.

  Args:
    x: [B, H, W, C_in].
    w: convolution weight [n, n, C_in, C_out] (HWIO, as `flax.linen.Conv`), n odd.

  Returns:
    [B, H * factor, W * factor, C_out].
  """
  factor = _pair(factor, "factor")[0]
  conv_size = _check_conv_weight(w)
  kernel = setup_kernel(k) * (gain * factor**2)
  # Full correlation of the zero-inserted input with w: length H * factor + n - 1 per axis.
  full = [(conv_size - 1, conv_size - 1 + factor - 1)] * 2
  x = lax.conv_general_dilated(
    x, w, (1, 1), padding=full, lhs_dilation=(factor, factor), dimension_numbers=_DIMENSIONS
  )
  # Crop at the offset of `upsample_2d` followed by a centred ('SAME') n x n convolution.
  pad0 = factor - 1 + (kernel.shape[0] - factor + 1) // 2 - (conv_size - 1) // 2
  pad1 = kernel.shape[0] - conv_size - pad0
  return upfirdn2d(x, kernel, pad=(pad0, pad1))


def conv_downsample_2d(
  x: jax.Array, w: jax.Array, k: Kernel = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0
) -> jax.Array:
  """A k x k convolution followed by FIR down-sampling, fused so that zeros are padded only once.

  The input is FIR-filtered with padding for both filters, then convolved with `w` at stride
  `factor`; away from the border this equals `downsample_2d` of a 'SAME' convolution.

  Args:
    x: [B, H, W, C_in], H and W multiples of `factor`.
    w: convolution weight [n, n, C_in, C_out] (HWIO), n odd.

  Returns:
    [B, H // factor, W // factor, C_out].
  """
  factor = _pair(factor, "factor")[0]
  conv_size = _check_conv_weight(w)
  kernel = setup_kernel(k) * gain
  p = kernel.shape[0] - factor + conv_size - 1
  x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
  return lax.conv_general_dilated(
    x, w, (factor, factor), padding="VALID", dimension_numbers=_DIMENSIONS
  )


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour up-sampling: every pixel becomes a factor x factor block. [B,H,W,C] -> [B,fH,fW,C]."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Average pooling over factor x factor blocks. [B, H, W, C] -> [B, H // f, W // f, C]."""
  batch, height, width, channels = x.shape
  x = x.reshape(batch, height // factor, factor, width // factor, factor, channels)
  return x.mean(axis=(2, 4))


class Conv2d(nn.Module):
  """A k x k convolution, optionally fused with FIR up- or down-sampling by 2 (StyleGAN2).

  Parameters are `weight` [k, k, C_in, features] and `bias` [features], the reference code's names.

  Attributes:
    features: output channels.
    kernel_size: the odd convolution size k.
    up: fuse FIR up-sampling by 2 before the convolution.
    down: fuse FIR down-sampling by 2 after the convolution.
    resample_kernel: the FIR taps.
    use_bias: add a bias (initialised to zero).
    kernel_init: initialiser of `weight`.
  """

  features: int
  kernel_size: int = 3
  up: bool = False
  down: bool = False
  resample_kernel: tuple[int, ...] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] -> [B, H', W', features] (H' = 2H up, H/2 down, H otherwise)."""
    if self.up and self.down:
      raise ValueError("Conv2d: up and down cannot both be set.")
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    w = self.param("weight", self.kernel_init, shape)
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = lax.conv_general_dilated(x, w, (1, 1), padding="SAME", dimension_numbers=_DIMENSIONS)
    if self.use_bias:
      x = x + self.param("bias", nn.initializers.zeros, (self.features,))
    return x
