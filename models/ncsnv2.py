"""NCSNv2 (Song & Ermon 2020): a RefineNet score network with dilated convolutions.

The network (Song & Ermon 2020, App. B.1; Song & Ermon 2019, App. B.1) is an encoder of
pre-activation residual blocks followed by a cascade of RefineNet blocks (Lin et al. 2017):

  encoder  stage s = two residual blocks (normalise, ELU, 3x3 conv, twice) at width m_s * nf;
           the first block of a stage may "go down": by mean pooling (resolution / 2) in the early
           stages, by a dilated convolution (same resolution, wider receptive field) in the last two;
  decoder  RefineBlock_i fuses the output of stage S - i with the previous RefineBlock:
           residual conv units (RCU) on each input, multi-resolution fusion (MSF: 3x3 conv,
           up-sampling to the larger input, sum), chained residual pooling (CRP: 5x5 pooling and
           3x3 conv, twice, each added back), and output RCUs (three in the last block);
  head     normalise, ELU, 3x3 conv to the image channels.

NCSNv2 is not told the noise level: its output is divided by sigma_i, the noise level of the
input's index i (Song & Ermon 2020, Technique 3), so it models s(x, sigma_i) = f(x) / sigma_i. The
index i counts from sigma_max (i = 0) down to sigma_min (i = N - 1); `sde_lib.VESDE.c_noise` with
`continuous=False` gives it. NCSN (models/ncsn.py) is the same RefineNet with noise-conditional
instance normalisation everywhere.

Three depths exist, chosen by image size as in the reference code: `ncsnv2_64` (up to 64x64, one
halving), `ncsnv2_128` (96 to 128, two halvings, widths up to 4 nf) and `ncsnv2_256` (129 to 256,
three halvings); `ncsnv2` picks one from config.data.image_size.

Details follow the NCSN / NCSNv2 authors' code (and its port in score_sde_pytorch), so that the
parameter count of `ve/ncsnv2/cifar10` is the published 29,694,083: RCU and CRP convolutions have
no bias; up-sampling in MSF is bilinear with aligned corners; convolutions start as
torch.nn.Conv2d does (uniform, bound 1 / sqrt(fan_in), for weights and biases). (The JAX original,
score_sde/models/ncsnv2.py, widens the third RefineBlock to 2 nf and up-samples with half-pixel
centres; its parameter count differs.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import layers
from models.normalization import get_normalization
from models.utils import register_model

Norm = Callable[..., nn.Module]

# torch.nn.Conv2d's default initialisation: U(-b, b), b = 1 / sqrt(fan_in), for weights and biases.
_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

INTERPOLATIONS = ("bilinear", "nearest_neighbor")

# Encoder stages (width multiplier, first block goes down, dilation) and decoder widths, deepest
# first, of each depth (Song & Ermon 2020, App. B.1).
Stage = tuple[int, bool, int]
VARIANTS: dict[str, tuple[tuple[Stage, ...], tuple[int, ...]]] = {
  "64": (((1, False, 1), (2, True, 1), (2, True, 2), (2, True, 4)), (2, 2, 1, 1)),
  "128": (
    ((1, False, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4)),
    (4, 2, 2, 1, 1),
  ),
  "256": (
    ((1, False, 1), (2, True, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4)),
    (4, 2, 2, 2, 1, 1),
  ),
}


def conv(
  x: jax.Array,
  features: int,
  kernel_size: int = 3,
  dilation: int = 1,
  use_bias: bool = True,
  name: str | None = None,
) -> jax.Array:
  """A k x k convolution with 'SAME' padding and torch.nn.Conv2d's initialisation. [B,H,W,F]

  Created in the calling module's scope (call it inside an `nn.compact` method).
  """
  bound = 1.0 / math.sqrt(x.shape[-1] * kernel_size**2)

  def bias_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    padding="SAME",
    kernel_dilation=(dilation, dilation),
    use_bias=use_bias,
    kernel_init=_KERNEL_INIT,
    bias_init=bias_init,
    name=name,
  )(x)


def mean_pool(x: jax.Array) -> jax.Array:
  """Average of each 2x2 block: [B, H, W, C] -> [B, H/2, W/2, C]."""
  return nn.avg_pool(x, (2, 2), (2, 2))


def _align_corners_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Neighbours and weights of linear interpolation mapping the end pixels onto each other."""
  position = np.linspace(0.0, n_in - 1.0, n_out) if n_out > 1 else np.zeros(1)
  low = np.floor(position).astype(np.int32)
  high = np.minimum(low + 1, n_in - 1)
  return low, high, (position - low).astype(np.float32)


def resize(x: jax.Array, shape: Sequence[int], interpolation: str) -> jax.Array:
  """Resizes [B, H, W, C] to [B, shape[0], shape[1], C].

  "bilinear" aligns the corner pixels (torch's align_corners=True, the NCSN authors' choice);
  "nearest_neighbor" copies the nearest pixel.
  """
  if tuple(x.shape[1:3]) == tuple(shape):
    return x
  if interpolation == "nearest_neighbor":
    return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), "nearest")
  for axis, n_out in ((1, shape[0]), (2, shape[1])):
    low, high, weight = _align_corners_weights(x.shape[axis], n_out)
    weight = weight.reshape((-1,) + (1,) * (3 - axis))
    x = jnp.take(x, low, axis=axis) * (1 - weight) + jnp.take(x, high, axis=axis) * weight
  return x


class ResidualBlock(nn.Module):
  """Pre-activation residual block: norm, act, conv, norm, act, conv, plus a shortcut.

  With `down`, the block halves the resolution (3x3 conv then 2x2 mean pooling, and a 1x1 conv
  then mean pooling on the shortcut), or, when `dilation` > 1, keeps it and uses dilated
  convolutions on both paths. The shortcut is the identity when the width does not change.

  Attributes:
    features: output channels.
    norm: normalisation factory, layers called as `norm()(x, y)`.
    act: activation.
    down: whether this is the first block of a stage that goes down.
    dilation: dilation of the 3x3 convolutions.
  """

  features: int
  norm: Norm
  act: Callable[[jax.Array], jax.Array]
  down: bool = False
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """x: [B, H, W, C_in], y: [B] noise-level index or None. Returns [B, H', W', features]."""
    d = self.dilation
    h = self.act(self.norm(name="normalize1")(x, y))
    if self.down:
      h = conv(h, x.shape[-1], dilation=d, name="conv1")
      h = self.act(self.norm(name="normalize2")(h, y))
      if d > 1:
        h = conv(h, self.features, dilation=d, name="conv2")
        shortcut = conv(x, self.features, dilation=d, name="shortcut")
      else:
        h = mean_pool(conv(h, self.features, name="conv2"))
        shortcut = mean_pool(conv(x, self.features, kernel_size=1, name="shortcut"))
      return h + shortcut
    h = conv(h, self.features, dilation=d, name="conv1")
    h = self.act(self.norm(name="normalize2")(h, y))
    h = conv(h, self.features, dilation=d, name="conv2")
    if self.features == x.shape[-1]:
      return h + x
    kernel_size = 1 if d == 1 else 3
    return h + conv(x, self.features, kernel_size, dilation=d, name="shortcut")


class RCUBlock(nn.Module):
  """Residual conv units: `n_blocks` x (n_stages x (norm?, act, 3x3 conv without bias) + skip)."""

  features: int
  n_blocks: int
  act: Callable[[jax.Array], jax.Array]
  norm: Norm | None = None
  n_stages: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        if self.norm is not None:
          x = self.norm(name=f"norm_{i}_{j}")(x, y)
        x = conv(self.act(x), self.features, use_bias=False, name=f"conv_{i}_{j}")
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: act, then n_stages x (norm?, 5x5 pool, 3x3 conv), each added back.

  NCSNv2 max-pools; NCSN average-pools (zero padding counted, as torch's AvgPool2d).
  """

  features: int
  act: Callable[[jax.Array], jax.Array]
  norm: Norm | None = None
  pool: str = "max"
  n_stages: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    x = self.act(x)
    path = x
    for i in range(self.n_stages):
      if self.norm is not None:
        path = self.norm(name=f"norm_{i}")(path, y)
      if self.pool == "max":
        path = nn.max_pool(path, (5, 5), (1, 1), padding="SAME")
      else:
        path = nn.avg_pool(path, (5, 5), (1, 1), padding="SAME", count_include_pad=True)
      path = conv(path, self.features, use_bias=False, name=f"conv_{i}")
      x = path + x
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum over inputs of resize(3x3 conv(norm?(x_i))) at `shape`."""

  features: int
  shape: tuple[int, int]
  interpolation: str = "bilinear"
  norm: Norm | None = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], y: jax.Array | None = None) -> jax.Array:
    total = 0.0
    for i, x in enumerate(xs):
      h = self.norm(name=f"norm_{i}")(x, y) if self.norm is not None else x
      h = conv(h, self.features, name=f"conv_{i}")
      total = total + resize(h, self.shape, self.interpolation)
    return total


class RefineBlock(nn.Module):
  """RefineNet block: RCUs per input, MSF (several inputs), CRP, output RCUs (3 if `end`)."""

  features: int
  shape: tuple[int, int]
  act: Callable[[jax.Array], jax.Array]
  norm: Norm | None = None
  pool: str = "max"
  interpolation: str = "bilinear"
  end: bool = False

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], y: jax.Array | None = None) -> jax.Array:
    """xs: the encoder feature map (and the previous RefineBlock's output). Returns [B, *shape, F]."""
    hs = [
      RCUBlock(x.shape[-1], 2, self.act, self.norm, name=f"adapt_{i}")(x, y)
      for i, x in enumerate(xs)
    ]
    if len(hs) > 1:
      h = MSFBlock(self.features, self.shape, self.interpolation, self.norm, name="msf")(hs, y)
    else:
      h = hs[0]
    h = CRPBlock(self.features, self.act, self.norm, self.pool, name="crp")(h, y)
    return RCUBlock(self.features, 3 if self.end else 1, self.act, self.norm, name="output")(h, y)


class RefineNet(nn.Module):
  """The RefineNet score network shared by NCSN and NCSNv2 (module docstring).

  Attributes:
    nf: base width.
    stages: encoder stages (width multiplier, goes down, dilation), shallowest first.
    refine_mults: width multiplier of each RefineBlock, deepest first (one per stage).
    conditional: noise-conditional normalisation in every block (NCSN); otherwise plain
      normalisation in the encoder and none in the RefineBlocks (NCSNv2).
    pool: pooling of the chained residual pooling, "max" (NCSNv2) or "avg" (NCSN).
    normalization: config.model.normalization ("InstanceNorm++", "InstanceNorm", "GroupNorm", ...).
    nonlinearity: config.model.nonlinearity ("elu", "relu", "lrelu", "swish").
    interpolation: up-sampling in the fusion blocks, "bilinear" or "nearest_neighbor".
    centered: inputs already in [-1, 1]; otherwise data in [0, 1] are mapped to [-1, 1].
    scale_by_sigma: divide the output by sigma_i of the input's noise-level index i.
    image_size, num_channels: input height / width and channels.
    num_scales: number of noise levels N (rows of the conditional embeddings, length of the table).
    sigma_min, sigma_max: ends of the geometric noise levels, sigma_0 = sigma_max.
  """

  nf: int = 128
  stages: tuple[Stage, ...] = VARIANTS["64"][0]
  refine_mults: tuple[int, ...] = VARIANTS["64"][1]
  conditional: bool = False
  pool: str = "max"
  normalization: str = "InstanceNorm++"
  nonlinearity: str = "elu"
  interpolation: str = "bilinear"
  centered: bool = False
  scale_by_sigma: bool = True
  image_size: int = 32
  num_channels: int = 3
  num_scales: int = 232
  sigma_min: float = 0.01
  sigma_max: float = 50.0

  # Registry name, for messages.
  config_name: ClassVar[str] = "ncsnv2"

  def __post_init__(self):
    self._validate()
    super().__post_init__()

  def _validate(self) -> None:
    layers.get_act(self.nonlinearity)
    get_normalization(self.normalization, self.conditional, self.num_scales)
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(
        f"Unknown config.model.interpolation {self.interpolation!r}. "
        f"Valid choices: {', '.join(INTERPOLATIONS)}."
      )
    if self.pool not in ("max", "avg"):
      raise ValueError(f"RefineNet pool = {self.pool!r}: valid choices are 'max' and 'avg'.")
    if len(self.refine_mults) != len(self.stages):
      raise ValueError("RefineNet needs one RefineBlock per encoder stage.")
    if self.nf < 1 or self.num_channels < 1:
      raise ValueError(
        f"config.model.nf = {self.nf} and config.data.num_channels = {self.num_channels} must be "
        "positive."
      )
    halvings = sum(1 for _, down, dilation in self.stages if down and dilation == 1)
    if self.image_size < 2**halvings or self.image_size % 2**halvings:
      raise ValueError(
        f"config.data.image_size = {self.image_size}: {self.config_name} halves the resolution "
        f"{halvings} time(s), so the image size must be a positive multiple of {2**halvings}."
      )
    if str(self.normalization).lower() == "groupnorm":
      for channels in sorted({m * self.nf for m, _, _ in self.stages} | {self.nf}):
        groups = max(min(channels // 4, 32), 1)
        if channels % groups:
          raise ValueError(
            f"config.model.nf = {self.nf} gives {channels} channels, which min(C // 4, 32) groups "
            "of config.model.normalization = 'GroupNorm' do not divide."
          )
    if (self.conditional or self.scale_by_sigma) and self.num_scales < 1:
      raise ValueError(f"config.model.num_scales = {self.num_scales} must be positive.")
    if self.scale_by_sigma and not 0 < self.sigma_min < self.sigma_max:
      raise ValueError(
        f"config.sde.sigma_min = {self.sigma_min} and sigma_max = {self.sigma_max} need "
        "0 < sigma_min < sigma_max."
      )

  @property
  def sigmas(self) -> jax.Array:
    """The noise levels sigma_i, geometric from sigma_max (i = 0) to sigma_min (i = N - 1). [N]"""
    return layers.discrete_sigmas(self.sigma_min, self.sigma_max, self.num_scales)

  @nn.compact
  def __call__(self, x: jax.Array, c_noise: jax.Array, train: bool = False) -> jax.Array:
    """The score estimate at noise level index c_noise.

    Args:
      x: [B, image_size, image_size, num_channels] noisy images.
      c_noise: [B] integer noise-level index i (0 for sigma_max), as `VESDE.c_noise(t, False)`.
      train: unused (no dropout); kept for the common model signature.

    Returns:
      [B, image_size, image_size, num_channels]; s(x, sigma_i) when scale_by_sigma.
    """
    del train
    layers.check_input_shape(x, self.image_size, self.num_channels)
    y = None
    if self.conditional or self.scale_by_sigma:
      c_noise = jnp.asarray(c_noise)
      if not jnp.issubdtype(c_noise.dtype, jnp.integer):
        raise ValueError(
          f"{self.config_name} is conditioned on the integer index of a discrete noise level "
          f"(got c_noise of dtype {c_noise.dtype}): set config.training.continuous = False and "
          "use the VE SDE with config.sde.N = config.model.num_scales."
        )
      y = c_noise
    act = layers.get_act(self.nonlinearity)
    block_norm = get_normalization(self.normalization, self.conditional, self.num_scales)
    refine_norm = block_norm if self.conditional else None
    block_y = y if self.conditional else None

    h = x if self.centered else 2.0 * x - 1.0
    h = conv(h, self.nf, name="begin_conv")
    skips = []
    for s, (mult, down, dilation) in enumerate(self.stages):
      width = mult * self.nf
      h = ResidualBlock(width, block_norm, act, down, dilation, name=f"res{s + 1}_0")(h, block_y)
      h = ResidualBlock(width, block_norm, act, False, dilation, name=f"res{s + 1}_1")(h, block_y)
      skips.append(h)

    h = None
    for i, (skip, mult) in enumerate(zip(reversed(skips), self.refine_mults, strict=True)):
      inputs = [skip] if h is None else [skip, h]
      h = RefineBlock(
        mult * self.nf,
        tuple(skip.shape[1:3]),
        act,
        refine_norm,
        self.pool,
        self.interpolation,
        end=i == len(skips) - 1,
        name=f"refine{i + 1}",
      )(inputs, block_y)

    h = act(block_norm(name="normalizer")(h, block_y))
    h = conv(h, x.shape[-1], name="end_conv")
    if self.scale_by_sigma:
      h = h / self.sigmas[y].astype(h.dtype)[:, None, None, None]
    return h

  @classmethod
  def fields_from_config(
    cls, config: Any, variant: str, conditional: bool = False
  ) -> dict[str, Any]:
    """The network's fields from config.model, config.data and config.sde, in this one place.

    Args:
      config: the full config.
      variant: the depth, a key of VARIANTS.
      conditional: noise-conditional normalisation (NCSN) or not (NCSNv2).

    Raises:
      ValueError naming the config field when one is missing, out of range, or when
      config.model.num_scales and config.sde.N differ.
    """
    model, data = config.model, config.data
    stages, refine_mults = VARIANTS[variant]
    fields: dict[str, Any] = {
      "stages": stages,
      "refine_mults": refine_mults,
      "conditional": conditional,
    }
    for name in ("nf", "normalization", "nonlinearity", "interpolation", "scale_by_sigma"):
      if name in model:
        fields[name] = model[name]
    for name in ("image_size", "num_channels", "centered"):
      if name in data:
        fields[name] = data[name]
    fields["interpolation"] = str(fields.get("interpolation", cls.interpolation)).lower()
    if conditional or fields.get("scale_by_sigma", cls.scale_by_sigma):
      if "num_scales" not in model:
        raise ValueError(
          f"{cls.config_name} needs config.model.num_scales, its number of noise levels (equal to "
          "config.sde.N)."
        )
      fields["num_scales"] = int(model.num_scales)
      sde = config.get("sde", {})
      if "N" in sde and int(sde["N"]) != fields["num_scales"]:
        raise ValueError(
          f"config.model.num_scales = {model.num_scales} and config.sde.N = {sde['N']} must be "
          f"equal: {cls.config_name}'s noise-level table is the SDE's discretisation."
        )
    if fields.get("scale_by_sigma", cls.scale_by_sigma):
      sde = config.get("sde", {})
      for name in ("sigma_min", "sigma_max"):
        if name not in sde:
          raise ValueError(
            f"config.model.scale_by_sigma divides by the noise level sigma_i, which needs "
            f"config.sde.{name} (the VE SDE's arguments)."
          )
        fields[name] = float(sde[name])
    return fields


def variant_for_image_size(image_size: int) -> str:
  """The NCSNv2 depth the reference code uses for `image_size` (config.data.image_size)."""
  if image_size < 96:
    return "64"
  if image_size <= 128:
    return "128"
  if image_size <= 256:
    return "256"
  raise ValueError(
    f"config.data.image_size = {image_size}: NCSNv2 networks exist up to 256x256 "
    "(ncsnv2_64 below 96, ncsnv2_128 up to 128, ncsnv2_256 up to 256)."
  )


@register_model("ncsnv2")
class NCSNv2(RefineNet):
  """NCSNv2 with the depth chosen from config.data.image_size (module docstring)."""

  variant: ClassVar[str | None] = None

  @classmethod
  def from_config(cls, config: Any) -> NCSNv2:
    variant = cls.variant or variant_for_image_size(int(config.data.image_size))
    return cls(**cls.fields_from_config(config, variant))


@register_model("ncsnv2_64")
class NCSNv2_64(NCSNv2):  # the published name
  """NCSNv2 for images up to 64x64 (CIFAR-10, CelebA): one halving, dilations 2 and 4."""

  variant: ClassVar[str | None] = "64"
  config_name: ClassVar[str] = "ncsnv2_64"


@register_model("ncsnv2_128")
class NCSNv2_128(NCSNv2):
  """NCSNv2 for 96x96 to 128x128 images (LSUN bedroom 128): two halvings, widths up to 4 nf."""

  variant: ClassVar[str | None] = "128"
  config_name: ClassVar[str] = "ncsnv2_128"


@register_model("ncsnv2_256")
class NCSNv2_256(NCSNv2):
  """NCSNv2 for images up to 256x256: three halvings, widths up to 4 nf."""

  variant: ClassVar[str | None] = "256"
  config_name: ClassVar[str] = "ncsnv2_256"
