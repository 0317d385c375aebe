"""The DDPM U-Net (Ho et al. 2020, App. B), as used by the score-SDE paper's DDPM baselines.

A PixelCNN++-style U-Net: wide residual blocks with group normalisation (32 groups), a sinusoidal
time embedding added in every block, self-attention at the configured resolutions, nearest /
average-pooling resampling (optionally with a 3x3 convolution).

Call: `model.apply({"params": p}, x [B, H, W, C], c_noise [B], train=..., rngs={"dropout": key})`
-> [B, H, W, C], c_noise from `SDE.c_noise` (t (N - 1) for DDPM, 999 t for continuous VP, the level
index for discrete VE with `scale_by_sigma`). Module creation order matches the reference code's,
so its checkpoints map onto this parameter tree name by name.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.layers import check_choice, conv3x3, default_init, get_act, group_norm
from models.ncsnpp import read_fields
from models.utils import register_model

_NUM_GROUPS = 32
_MODEL_FIELDS = (
  "nf",
  "ch_mult",
  "num_res_blocks",
  "attn_resolutions",
  "dropout",
  "resamp_with_conv",
  "conditional",
  "scale_by_sigma",
  "nonlinearity",
  "normalization",
)


@register_model("ddpm")
class DDPM(nn.Module):
  """DDPM U-Net. Defaults are DDPM's CIFAR-10 model (35.7M parameters in the paper's count).

  Attributes:
    nf: base channel count (a multiple of 32: every group normalisation has 32 groups).
    ch_mult: channel multiplier per resolution; len(ch_mult) - 1 halvings.
    num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
    attn_resolutions: feature-map sizes that get a self-attention block.
    dropout: dropout rate inside residual blocks (active with train=True).
    resamp_with_conv: up/down-sampling includes a 3x3 convolution.
    conditional: condition on c_noise through a sinusoidal embedding.
    scale_by_sigma: divide the output by sigma_{c_noise}, c_noise being a discrete level index.
    nonlinearity: "swish", "elu", "relu" or "lrelu".
    normalization: "groupnorm".
    centered: inputs already in [-1, 1]; otherwise data in [0, 1] are mapped to [-1, 1] first.
    image_size, num_channels: input shape.
    continuous: trained on continuous time (config.training.continuous).
    sigma_min, sigma_max, num_scales: the discrete noise levels for scale_by_sigma.
  """

  nf: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  scale_by_sigma: bool = False
  nonlinearity: str = "swish"
  normalization: str = "groupnorm"
  centered: bool = True
  image_size: int = 32
  num_channels: int = 3
  continuous: bool = False
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000

  def __post_init__(self):
    self._validate()
    super().__post_init__()

  @classmethod
  def from_config(cls, config: Any) -> DDPM:
    """Builds the network from config.model, config.data, config.training and config.sde.

    Raises:
      ValueError naming the config field, for an unknown option value, an image size the network
      cannot halve, or an attention resolution that never occurs.
    """

    def needs_levels(fields: dict) -> bool:
      return bool(fields.get("scale_by_sigma", cls.scale_by_sigma))

    return cls(**read_fields(config, _MODEL_FIELDS, needs_levels))

  def _validate(self) -> None:
    check_choice(self.nonlinearity, tuple(layers.ACTIVATIONS), "config.model.nonlinearity")
    check_choice(self.normalization, ("groupnorm",), "config.model.normalization")
    for channels in {self.nf * m for m in self.ch_mult}:
      if channels % _NUM_GROUPS != 0:
        raise ValueError(
          f"config.model.nf * ch_mult gives {channels} channels; the DDPM model's group "
          f"normalisation has {_NUM_GROUPS} groups, so use multiples of {_NUM_GROUPS}."
        )
    if self.num_res_blocks < 0 or not 0.0 <= self.dropout < 1.0:
      raise ValueError(
        f"config.model.num_res_blocks = {self.num_res_blocks} (>= 0) and dropout = "
        f"{self.dropout} (in [0, 1)) are out of range."
      )
    layers.check_attn_resolutions(
      self.attn_resolutions, layers.unet_resolutions(self.image_size, self.ch_mult)
    )
    if self.scale_by_sigma and self.continuous:
      raise ValueError(
        "config.model.scale_by_sigma divides the DDPM model's output by the discrete noise level "
        "of its input index, which needs config.training.continuous = False."
      )

  @nn.compact
  def __call__(self, x: jax.Array, c_noise: jax.Array, train: bool = True) -> jax.Array:
    """Network output for noisy images x at noise conditioning c_noise.

    Args:
      x: [B, image_size, image_size, num_channels].
      c_noise: [B], from `SDE.c_noise`.
      train: enables dropout (needs rngs={"dropout": key}).

    Returns:
      [B, image_size, image_size, num_channels].
    """
    layers.check_input_shape(x, self.image_size, self.num_channels)
    act = get_act(self.nonlinearity)
    nf = self.nf
    num_resolutions = len(self.ch_mult)
    attn_block = functools.partial(layers.AttnBlock, num_groups=_NUM_GROUPS)
    resnet_block = functools.partial(
      layers.ResnetBlockDDPM, act=act, dropout=self.dropout, num_groups=_NUM_GROUPS
    )

    if self.conditional:
      temb = layers.get_timestep_embedding(c_noise, nf)
      temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
      temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))
    else:
      temb = None

    h = x if self.centered else 2.0 * x - 1.0  # data in [0, 1] -> [-1, 1]

    # Down-sampling path.
    hs = [conv3x3(h, nf)]
    for i_level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = resnet_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block()(h)
        hs.append(h)
      if i_level != num_resolutions - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv)(hs[-1]))

    # Bottleneck.
    h = hs[-1]
    h = resnet_block()(h, temb, train)
    h = attn_block()(h)
    h = resnet_block()(h, temb, train)

    # Up-sampling path.
    for i_level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = resnet_block(out_ch=nf * self.ch_mult[i_level])(
          jnp.concatenate([h, hs.pop()], axis=-1), temb, train
        )
      if h.shape[1] in self.attn_resolutions:
        h = attn_block()(h)
      if i_level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv)(h)

    h = act(group_norm(_NUM_GROUPS)(h))
    h = conv3x3(h, x.shape[-1], init_scale=0.0)

    if self.scale_by_sigma:
      sigmas = layers.discrete_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
      h = h / sigmas[c_noise.astype(jnp.int32)].reshape(-1, 1, 1, 1).astype(h.dtype)
    return h
