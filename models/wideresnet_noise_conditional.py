"""A noise-conditional Wide-ResNet classifier p(y | x_t, t), for class-conditional sampling.

Class-conditional sampling (Song et al. 2021, Sec. 5 and App. I.1) adds grad_x log p_t(y | x) to
the score; p_t(y | x) is a classifier trained on data perturbed by the forward SDE and told the
noise level. The paper's classifier is a Wide-ResNet-28-10 (Zagoruyko & Komodakis 2016) whose
residual blocks also receive an embedding of log sigma, sigma being the standard deviation of the
perturbation (the VE noise scale), through random Fourier features (Tancik et al. 2020) and two
dense layers, as NCSN++ embeds time.

Structure, as in the score-SDE reference (models/wideresnet_noise_conditional.py there):
  per-image standardisation (x - mean) / max(std, 1 / sqrt(D));
  3x3 conv to 16 channels;
  three groups of `blocks_per_group` blocks at 16 k, 32 k (stride 2) and 64 k (stride 2) channels,
  k = `channel_multiplier`; a block is GroupNorm, ReLU, 3x3 conv, + Dense(swish(emb)), GroupNorm,
  ReLU, 3x3 conv, plus a shortcut that average-pools and zero-pads channels when the shape changes
  (the first block of the first group normalises before branching);
  GroupNorm, ReLU, global average pooling, a dense layer to the class logits.
GroupNorm uses min(C // 4, 32) groups, so the network keeps no batch statistics. The Fourier
frequencies are not trained: as in NCSN++ they are the variable `W` of the "constants" collection
(models/layerspp.py), re-drawn from a fixed key when `apply` is given "params" only. Convolutions have
no bias and start as He normal (fan_out, gain 2); the last layer starts as U(-1, 1) / sqrt(classes).

The reference also standardises its inputs with the CIFAR-10 channel means and standard deviations
before calling the network (its `get_logit_fn`); that belongs to the caller.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import layers
from models.layerspp import GaussianFourierProjection
from models.utils import register_model

_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_GN_EPS = 1e-5


def _last_layer_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """U(-1, 1) / sqrt(num_outputs), the autoaugment Wide-ResNet's last-layer initialisation."""
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / np.sqrt(shape[-1])


def _norm_relu(x: jax.Array, name: str, relu: bool = True) -> jax.Array:
  """GroupNorm with min(C // 4, 32) groups (epsilon 1e-5), then ReLU."""
  groups = max(min(x.shape[-1] // 4, 32), 1)
  x = layers.GroupNorm(num_groups=groups, epsilon=_GN_EPS, name=name)(x)
  return nn.relu(x) if relu else x


def _shortcut(block_x: jax.Array, x: jax.Array) -> jax.Array:
  """block_x + x, with x average-pooled to block_x's resolution and zero-padded to its channels."""
  if block_x.shape[-1] != x.shape[-1]:
    stride = x.shape[2] // block_x.shape[2]
    x = nn.avg_pool(x, (stride, stride), (stride, stride))
    x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, block_x.shape[-1] - x.shape[-1])])
  return block_x + x


class WideResnetBlock(nn.Module):
  """Pre-activation Wide-ResNet block with the noise embedding added after the first conv."""

  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in], emb: [B, E] -> [B, H / stride, W / stride, channels]."""
    if self.activate_before_residual:
      x = _norm_relu(x, "norm_in")
      block_x = x
    else:
      block_x = _norm_relu(x, "norm_in")
    block_x = nn.Conv(
      self.channels,
      (3, 3),
      (self.stride, self.stride),
      padding="SAME",
      use_bias=False,
      kernel_init=_CONV_INIT,
      name="conv1",
    )(block_x)
    block_x = block_x + nn.Dense(self.channels, name="emb_proj")(nn.swish(emb))[:, None, None, :]
    block_x = _norm_relu(block_x, "norm_mid")
    block_x = nn.Conv(
      self.channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_CONV_INIT, name="conv2"
    )(block_x)
    return _shortcut(block_x, x)


@register_model("wideresnet_noise_conditional")
class WideResnetNoiseConditional(nn.Module):
  """Wide-ResNet-(6 blocks_per_group + 4)-(channel_multiplier) classifier conditioned on sigma.

  Attributes:
    blocks_per_group: residual blocks in each of the three groups (4 gives WRN-28).
    channel_multiplier: width factor k (10 gives WRN-28-10, the paper's).
    num_classes: number of classes (logits).
    embedding_size: number of random Fourier frequencies of log sigma.
    fourier_scale: standard deviation of those frequencies.
    image_size, num_channels: input height / width and channels.
  """

  blocks_per_group: int = 4
  channel_multiplier: int = 10
  num_classes: int = 10
  embedding_size: int = 128
  fourier_scale: float = 16.0
  image_size: int = 32
  num_channels: int = 3

  def __post_init__(self):
    for name in ("blocks_per_group", "channel_multiplier", "num_classes", "embedding_size"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"config.model.{name} = {getattr(self, name)} must be positive.")
    if self.image_size < 4 or self.image_size % 4:
      raise ValueError(
        f"config.data.image_size = {self.image_size}: the classifier halves the resolution "
        "twice, so it must be a positive multiple of 4."
      )
    super().__post_init__()

  @classmethod
  def from_config(cls, config: Any) -> WideResnetNoiseConditional:
    """Reads config.model (blocks_per_group, channel_multiplier, num_classes, embedding_size,
    fourier_scale; missing ones keep the paper's WRN-28-10 for CIFAR-10) and config.data
    (image_size, num_channels)."""
    fields = {}
    for name in (
      "blocks_per_group",
      "channel_multiplier",
      "num_classes",
      "embedding_size",
      "fourier_scale",
    ):
      if name in config.model:
        fields[name] = config.model[name]
    for name in ("image_size", "num_channels"):
      if name in config.data:
        fields[name] = config.data[name]
    return cls(**fields)

  @nn.compact
  def __call__(self, x: jax.Array, c_noise: jax.Array, train: bool = False) -> jax.Array:
    """Class logits of noisy images.

    Args:
      x: [B, H, W, C] noisy images.
      c_noise: [B] the standard deviation sigma > 0 of the noise in x (for any SDE, the
        std of its perturbation kernel, `sde.marginal_prob(x0, t)[1]`); the network embeds log sigma.
      train: unused (no dropout or batch statistics); kept for the common model signature.

    Returns:
      [B, num_classes] logits of p(y | x, sigma).
    """
    del train
    if x.shape[1:] != (self.image_size, self.image_size, self.num_channels):
      raise ValueError(
        f"Input of shape {tuple(x.shape)} does not match config.data.image_size = "
        f"{self.image_size} and config.data.num_channels = {self.num_channels}."
      )
    dim = np.prod(x.shape[1:])
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(dim))
    h = (x - mean) / std

    emb_dim = 4 * self.embedding_size
    emb = GaussianFourierProjection(
      self.embedding_size, self.fourier_scale, name="fourier_embedding"
    )(jnp.log(c_noise))
    emb = nn.Dense(emb_dim, name="emb_dense0")(emb)
    emb = nn.Dense(emb_dim, name="emb_dense1")(nn.swish(emb))

    h = nn.Conv(
      16, (3, 3), padding="SAME", use_bias=False, kernel_init=_CONV_INIT, name="init_conv"
    )(h)
    k = self.channel_multiplier
    for g, (channels, stride) in enumerate(((16 * k, 1), (32 * k, 2), (64 * k, 2))):
      for b in range(self.blocks_per_group):
        h = WideResnetBlock(
          channels,
          stride if b == 0 else 1,
          activate_before_residual=(g == 0 and b == 0),
          name=f"group{g}_block{b}",
        )(h, emb)
    h = _norm_relu(h, "norm_out")
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_last_layer_init, name="logits")(h)
