"""FIR resampling (models/up_or_down_sampling.py) against a direct numpy upfirdn2d and exact invariants.

The numpy reference below is a different algorithm from the JAX one (which is a single dilated,
strided, depthwise `lax.conv_general_dilated`): explicit zero insertion, explicit zero padding or
cropping, an explicit double loop over the filter taps (a true convolution), then striding.
All checks run in float64 (the jax.enable_x64 context) so the only error is round-off of ~1e-15 per
operation; the filters themselves are normalised in float32 (`setup_kernel`), which is why checks
involving normalised filters allow 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import up_or_down_sampling as uds


def numpy_upfirdn2d(x, kernel, up, down, pad):
  """Reference upfirdn2d on [B, H, W, C]: zero-insert, pad/crop, convolve with kernel, stride."""
  up_y, up_x = up
  down_y, down_x = down
  pad_y0, pad_y1, pad_x0, pad_x1 = pad
  batch, height, width, channels = x.shape
  # 1. Zero insertion: up - 1 zeros after every pixel.
  u = np.zeros((batch, height * up_y, width * up_x, channels))
  u[:, ::up_y, ::up_x, :] = x
  # 2. Zero padding; negative amounts crop.
  u = np.pad(
    u, [(0, 0), (max(pad_y0, 0), max(pad_y1, 0)), (max(pad_x0, 0), max(pad_x1, 0)), (0, 0)]
  )
  u = u[
    :,
    max(-pad_y0, 0) : u.shape[1] - max(-pad_y1, 0),
    max(-pad_x0, 0) : u.shape[2] - max(-pad_x1, 0),
  ]
  # 3. 'valid' 2-D convolution: out[i, j] = sum_ab u[i + a, j + b] * k[n_y - 1 - a, n_x - 1 - b].
  n_y, n_x = kernel.shape
  out_h, out_w = u.shape[1] - n_y + 1, u.shape[2] - n_x + 1
  out = np.zeros((batch, out_h, out_w, channels))
  for a in range(n_y):
    for b in range(n_x):
      out += u[:, a : a + out_h, b : b + out_w, :] * kernel[n_y - 1 - a, n_x - 1 - b]
  # 4. Decimation.
  return out[:, ::down_y, ::down_x, :]


def numpy_conv_same(x, w):
  """A 'SAME' correlation of [B, H, W, C_in] with an odd [n, n, C_in, C_out] weight (as nn.Conv)."""
  n = w.shape[0]
  q = (n - 1) // 2
  xp = np.pad(x, [(0, 0), (q, q), (q, q), (0, 0)])
  height, width = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (w.shape[-1],))
  for a in range(n):
    for b in range(n):
      out += np.einsum("bhwc,cd->bhwd", xp[:, a : a + height, b : b + width, :], w[a, b])
  return out


# (image H, W, filter, up, down, pad): odd and non-square sizes, non-symmetric and non-square filters,
# factors 1-3, positive, zero and negative (cropping) pads, per-axis values.
_CASES = [
  ((5, 7), "random3x3", (1, 1), (1, 1), (1, 1, 1, 1)),
  ((5, 7), "random3x3", (2, 2), (1, 1), (2, 1, 2, 1)),
  ((6, 6), "random2x4", (1, 1), (2, 2), (1, 2, 0, 3)),
  ((5, 5), "fir1331", (3, 3), (1, 1), (2, 1, 2, 1)),
  ((9, 6), "fir1331", (1, 1), (3, 3), (0, 0, 1, 0)),
  ((7, 5), "random3x3", (2, 3), (3, 2), (-1, 2, 1, -2)),
  ((4, 4), "random1x1", (2, 2), (1, 1), (0, 0, 0, 0)),
  ((6, 5), "fir1331", (2, 1), (1, 2), (-2, -1, 3, 0)),
]


def _kernel(name, rng):
  if name == "fir1331":
    return uds.setup_kernel([1, 3, 3, 1]).astype(np.float64)
  rows, cols = (int(s) for s in name.removeprefix("random").split("x"))
  return rng.normal(size=(rows, cols))


@pytest.mark.parametrize("size, kernel_name, up, down, pad", _CASES)
def test_upfirdn2d_matches_direct_numpy(size, kernel_name, up, down, pad):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *size, 3))
  kernel = _kernel(kernel_name, rng)
  expected = numpy_upfirdn2d(x, kernel, up, down, pad)
  with jax.enable_x64(True):
    got = np.asarray(uds.upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad))
  assert got.shape == expected.shape
  # float64 on both sides: only round-off of sums of <= 12 products differs.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_setup_kernel_is_normalised_outer_product():
  k = uds.setup_kernel([1, 3, 3, 1])
  np.testing.assert_allclose(k, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0, rtol=1e-7)
  with pytest.raises(ValueError):
    uds.setup_kernel([1, -1])


@pytest.mark.parametrize("factor", [2, 3])
def test_box_filter_is_nearest_and_average_pooling_and_round_trips(factor):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 7, 3))
  box = [1] * factor
  with jax.enable_x64(True):
    up = np.asarray(uds.upsample_2d(jnp.asarray(x), box, factor))
    down_of_up = np.asarray(uds.downsample_2d(jnp.asarray(up), box, factor))
  # A box filter of length `factor` up-samples by pixel replication and down-samples by block means,
  # so down(up(x)) = x exactly up to the float32 normalisation of the 1/factor^2 taps.
  np.testing.assert_allclose(up, np.repeat(np.repeat(x, factor, 1), factor, 2), atol=1e-6)
  np.testing.assert_allclose(down_of_up, x, atol=1e-6)
  np.testing.assert_allclose(up, uds.naive_upsample_2d(x, factor), atol=1e-6)
  y = rng.normal(size=(2, 2 * factor, 3 * factor, 3))
  block_means = y.reshape(2, 2, factor, 3, factor, 3).mean(axis=(2, 4))
  with jax.enable_x64(True):
    pooled = np.asarray(uds.downsample_2d(jnp.asarray(y), box, factor))
  np.testing.assert_allclose(pooled, block_means, atol=1e-6)
  np.testing.assert_allclose(uds.naive_downsample_2d(y, factor), block_means, atol=1e-12)


@pytest.mark.parametrize(
  "k, factor", [([1, 3, 3, 1], 2), ([1, 1], 2), ([1, 2, 1], 3), ([1, 2, 2, 1], 2)]
)
def test_upsample_and_downsample_are_adjoint_and_centred(k, factor):
  """For a symmetric filter with len(k) - factor even, down = up^T / factor^2, and both commute
  with flipping the image: the filters are centred, as the reference code's padding makes them."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 6, 5, 3))
  y = rng.normal(size=(2, 6 * factor, 5 * factor, 3))
  with jax.enable_x64(True):
    up_x = np.asarray(uds.upsample_2d(jnp.asarray(x), k, factor))
    down_y = np.asarray(uds.downsample_2d(jnp.asarray(y), k, factor))
    up_flipped = np.asarray(uds.upsample_2d(jnp.asarray(x[:, ::-1, ::-1]), k, factor))
    down_flipped = np.asarray(uds.downsample_2d(jnp.asarray(y[:, ::-1, ::-1]), k, factor))
  # Inner products of ~200 unit-variance terms: float64 round-off ~1e-13; taps normalised in float32.
  np.testing.assert_allclose(np.sum(up_x * y), factor**2 * np.sum(x * down_y), rtol=1e-6)
  np.testing.assert_allclose(up_flipped, up_x[:, ::-1, ::-1], atol=1e-12)
  np.testing.assert_allclose(down_flipped, down_y[:, ::-1, ::-1], atol=1e-12)


def test_upsample_and_downsample_match_numpy_with_documented_padding():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 6, 2))
  kernel = uds.setup_kernel([1, 3, 3, 1]).astype(np.float64)
  # Up by 2: filter scaled by 4, pads ((4-2+1)//2 + 1, (4-2)//2) = (2, 1); down by 2: pads (1, 1).
  expected_up = numpy_upfirdn2d(x, 4 * kernel, (2, 2), (1, 1), (2, 1, 2, 1))
  expected_down = numpy_upfirdn2d(x[:, :4], kernel, (1, 1), (2, 2), (1, 1, 1, 1))
  with jax.enable_x64(True):
    np.testing.assert_allclose(uds.upsample_2d(jnp.asarray(x)), expected_up, atol=1e-12)
    np.testing.assert_allclose(uds.downsample_2d(jnp.asarray(x[:, :4])), expected_down, atol=1e-12)


@pytest.mark.parametrize(
  "k, factor, conv_size", [([1, 3, 3, 1], 2, 3), ([1, 1], 2, 3), ([1, 2, 1], 3, 5)]
)
def test_fused_convolutions_equal_unfused_away_from_the_border(k, factor, conv_size):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 6, 6, 3))
  w = rng.normal(size=(conv_size, conv_size, 3, 4))
  with jax.enable_x64(True):
    fused_up = np.asarray(uds.upsample_conv_2d(jnp.asarray(x), jnp.asarray(w), k, factor))
    unfused_up = numpy_conv_same(np.asarray(uds.upsample_2d(jnp.asarray(x), k, factor)), w)
    fused_down = np.asarray(uds.conv_downsample_2d(jnp.asarray(x), jnp.asarray(w), k, factor))
    unfused_down = np.asarray(uds.downsample_2d(jnp.asarray(numpy_conv_same(x, w)), k, factor))
  assert fused_up.shape == (2, 6 * factor, 6 * factor, 4)
  assert fused_down.shape == (2, 6 // factor, 6 // factor, 4)
  # The two orders differ only where the filter tails cross the border: (n - 1) / 2 + len(k) pixels.
  margin = (conv_size - 1) // 2 + len(k)
  inner = slice(margin, 6 * factor - margin)
  np.testing.assert_allclose(fused_up[:, inner, inner], unfused_up[:, inner, inner], atol=1e-12)
  margin_down = -(-margin // factor)
  inner = slice(margin_down, 6 // factor - margin_down)
  if inner.start < inner.stop:
    np.testing.assert_allclose(
      fused_down[:, inner, inner], unfused_down[:, inner, inner], atol=1e-12
    )
  if len(k) == factor:
    # A box filter has no tails beyond the up-sampled image: both orders agree everywhere.
    np.testing.assert_allclose(fused_up, unfused_up, atol=1e-12)
  else:
    # Otherwise they differ at the border (the fused form keeps the filter tails there).
    assert not np.allclose(fused_up, unfused_up)


def test_fused_upsample_conv_matches_single_fir_with_the_combined_filter():
  """upsample_conv_2d(x, w) is one up-sampling FIR with the filter k * flip(w): check with numpy."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 5, 4, 1))
  w = rng.normal(size=(3, 3, 1, 1))
  kernel = 4 * uds.setup_kernel([1, 3, 3, 1]).astype(np.float64)
  combined = np.zeros((6, 6))
  for a in range(3):
    for b in range(3):
      combined[a : a + 4, b : b + 4] += kernel * w[2 - a, 2 - b, 0, 0]
  # Output offset: that of upsample_2d (pad0 2) plus the centred 3x3 convolution (1 more tap).
  expected = numpy_upfirdn2d(x, combined, (2, 2), (1, 1), (3, 2, 3, 2))
  with jax.enable_x64(True):
    got = np.asarray(uds.upsample_conv_2d(jnp.asarray(x), jnp.asarray(w)))
  np.testing.assert_allclose(got, expected, atol=1e-12)


def test_conv2d_module_parameters_and_shapes():
  x = jnp.ones((2, 8, 8, 3))
  for kwargs, size in [({"up": True}, 16), ({"down": True}, 4), ({}, 8)]:
    module = uds.Conv2d(5, **kwargs)
    params = module.init(jax.random.key(0), x)["params"]
    assert set(params) == {"weight", "bias"}
    assert params["weight"].shape == (3, 3, 3, 5)
    assert module.apply({"params": params}, x).shape == (2, size, size, 5)
  with pytest.raises(ValueError):
    uds.Conv2d(5, up=True, down=True).init(jax.random.key(0), x)
