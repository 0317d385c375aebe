"""NCSN++ and DDPM++: the U-Net score networks of Song et al. 2021 (Sec. 4.4 and App. H).

One class covers both; the options choose which (the paper's names in brackets):
- residual blocks: BigGAN-style blocks that resample inside the block (`resblock_type="biggan"`) or
  DDPM blocks with separate up/down-sampling layers (`"ddpm"`);
- resampling: FIR filters (`fir`, `fir_kernel`, StyleGAN2) or nearest / average pooling;
- `skip_rescale`: residual sums divided by sqrt(2);
- `progressive` output (none / output_skip / residual) and `progressive_input` (none / input_skip /
  residual) image pyramids, merged by `progressive_combine` (sum / cat);
- noise embedding: random Fourier features of log sigma (`"fourier"`, for continuous VE) or the
  sinusoidal embedding of a time / level index (`"positional"`);
- `scale_by_sigma`: output divided by sigma, so a VE network's output is the score (Song & Ermon 2020).
DDPM++ (cont.) is biggan blocks, no FIR, no pyramids, positional; NCSN++ adds FIR, the residual
input pyramid and, for VE, Fourier features and scale_by_sigma.

Call: `model.apply({"params": p}, x [B, H, W, C], c_noise [B], train=..., rngs={"dropout": key})`
-> [B, H, W, C], where c_noise is `SDE.c_noise(t, continuous)`: sigma(t) for continuous VE, the
level index counted from sigma_max for discrete VE, 999 t for continuous VP, t (N - 1) for DDPM.

Module creation order (and so every Flax auto-name) is the reference code's, so its released
checkpoints map onto this parameter tree name by name; the fixed Fourier weights are in the
"constants" collection (see layerspp.GaussianFourierProjection).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers, layerspp
from models.layers import check_choice, conv3x3, default_init, get_act, group_norm, rescale_sum
from models.layerspp import num_groups_for
from models.utils import register_model

_CHOICES = {
  "resblock_type": ("biggan", "ddpm"),
  "progressive": ("none", "output_skip", "residual"),
  "progressive_input": ("none", "input_skip", "residual"),
  "progressive_combine": ("sum", "cat"),
  "embedding_type": ("fourier", "positional"),
  "attention_type": ("ddpm",),
  "normalization": ("groupnorm",),
  "nonlinearity": tuple(layers.ACTIVATIONS),
}
_LOWERCASE = tuple(_CHOICES)
_TUPLES = ("ch_mult", "attn_resolutions", "fir_kernel")
# Fields read from config.model (the rest come from config.data, config.sde, config.training).
_MODEL_FIELDS = (
  "nf",
  "ch_mult",
  "num_res_blocks",
  "attn_resolutions",
  "dropout",
  "resamp_with_conv",
  "conditional",
  "fir",
  "fir_kernel",
  "skip_rescale",
  "resblock_type",
  "progressive",
  "progressive_input",
  "progressive_combine",
  "attention_type",
  "embedding_type",
  "init_scale",
  "fourier_scale",
  "conv_size",
  "scale_by_sigma",
  "nonlinearity",
  "normalization",
)


def read_fields(config: Any, model_fields: tuple[str, ...], scale_by_sigma_needs_levels) -> dict:
  """Collects a U-Net's fields from the config, in this one place.

  config.model.<field> for `model_fields` (missing ones keep the class default), config.data
  image_size / num_channels / centered, config.training.continuous, and sigma_min / sigma_max /
  num_scales from config.sde when present (required when `scale_by_sigma_needs_levels(fields)`).
  Strings are lower-cased and sequences become tuples.
  """
  fields = {name: config.model[name] for name in model_fields if name in config.model}
  for name in _LOWERCASE:
    if name in fields:
      fields[name] = str(fields[name]).lower()
  for name in _TUPLES:
    if name in fields:
      fields[name] = tuple(fields[name])
  for name in ("image_size", "num_channels", "centered"):
    if name in config.data:
      fields[name] = config.data[name]
  if "training" in config and "continuous" in config.training:
    fields["continuous"] = bool(config.training.continuous)
  fields.update(layers.noise_level_fields(config, scale_by_sigma_needs_levels(fields)))
  return fields


@register_model("ncsnpp")
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ U-Net. Defaults are the paper's NCSN++ (cont.) for CIFAR-10 with the VE SDE.

  Attributes:
    nf: base channel count.
    ch_mult: channel multiplier of each resolution; len(ch_mult) - 1 halvings.
    num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
    attn_resolutions: feature-map sizes that get a self-attention block.
    dropout: dropout rate inside residual blocks (active with train=True).
    resamp_with_conv: up/down-sampling layers include a 3x3 convolution (ddpm blocks, pyramids).
    conditional: condition on the noise level (time embedding); False ignores c_noise entirely.
    fir: FIR resampling with `fir_kernel` instead of nearest / average pooling.
    fir_kernel: FIR taps.
    skip_rescale: divide residual and skip sums by sqrt(2).
    resblock_type: "biggan" or "ddpm".
    progressive: output pyramid, "none", "output_skip" or "residual".
    progressive_input: input pyramid, "none", "input_skip" or "residual".
    progressive_combine: how the input pyramid joins the features, "sum" or "cat".
    attention_type: "ddpm" (the only kind the paper uses).
    embedding_type: "fourier" (of log c_noise) or "positional" (of c_noise).
    init_scale: initial scale of the last convolution of every block (0: near zero).
    fourier_scale: standard deviation of the Fourier frequencies.
    conv_size: size of the convolutions; the published architecture is 3x3 only.
    scale_by_sigma: divide the output by sigma: c_noise itself with Fourier embeddings, otherwise
      the discrete level sigma_{c_noise} of the geometric sequence (sigma_max ... sigma_min).
    nonlinearity: "swish", "elu", "relu" or "lrelu".
    normalization: "groupnorm" (min(C // 4, 32) groups).
    centered: inputs already in [-1, 1]; otherwise data in [0, 1] are mapped to [-1, 1] first.
    image_size: input height and width.
    num_channels: input channels.
    continuous: trained on continuous time (config.training.continuous).
    sigma_min, sigma_max, num_scales: the discrete noise levels for scale_by_sigma with a level index.
  """

  nf: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = True
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  attention_type: str = "ddpm"
  embedding_type: str = "fourier"
  init_scale: float = 0.0
  fourier_scale: float = 16.0
  conv_size: int = 3
  scale_by_sigma: bool = True
  nonlinearity: str = "swish"
  normalization: str = "groupnorm"
  centered: bool = False
  image_size: int = 32
  num_channels: int = 3
  continuous: bool = True
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000

  def __post_init__(self):
    self._validate()
    super().__post_init__()

  @classmethod
  def from_config(cls, config: Any) -> NCSNpp:
    """Builds the network from config.model, config.data, config.training and config.sde.

    Raises:
      ValueError naming the config field, for an unknown option value, an image size the network
      cannot halve, or an attention resolution that never occurs.
    """

    def needs_levels(fields: dict) -> bool:
      scale = fields.get("scale_by_sigma", cls.scale_by_sigma)
      return bool(scale) and fields.get("embedding_type", cls.embedding_type) == "positional"

    return cls(**read_fields(config, _MODEL_FIELDS, needs_levels))

  def _validate(self) -> None:
    for name, choices in _CHOICES.items():
      check_choice(getattr(self, name), choices, f"config.model.{name}")
    if self.conv_size != 3:
      raise ValueError(
        f"config.model.conv_size = {self.conv_size}: the published architecture uses 3x3 "
        "convolutions only. Valid choices: 3."
      )
    if self.nf < 4 or self.num_res_blocks < 0 or not 0.0 <= self.dropout < 1.0:
      raise ValueError(
        f"config.model.nf = {self.nf} (>= 4), num_res_blocks = {self.num_res_blocks} (>= 0) and "
        f"dropout = {self.dropout} (in [0, 1)) are out of range."
      )
    for channels in {self.nf * m for m in self.ch_mult}:
      if num_groups_for(channels) < 1 or channels % num_groups_for(channels) != 0:
        raise ValueError(
          f"config.model.nf * ch_mult gives {channels} channels, which min(C // 4, 32) groups of "
          "group normalisation do not divide: use multiples of 4 (of 128 above 128)."
        )
    layers.check_attn_resolutions(
      self.attn_resolutions, layers.unet_resolutions(self.image_size, self.ch_mult)
    )
    if self.embedding_type == "fourier" and not self.continuous:
      raise ValueError(
        "config.model.embedding_type = 'fourier' embeds log sigma(t) and needs continuous time: set "
        "config.training.continuous = True or config.model.embedding_type = 'positional'."
      )
    if self.scale_by_sigma and self.embedding_type == "positional" and self.continuous:
      raise ValueError(
        "config.model.scale_by_sigma with embedding_type 'positional' divides by the discrete "
        "noise level of the input index, which needs config.training.continuous = False "
        "(with continuous VE training use embedding_type 'fourier')."
      )

  @nn.compact
  def __call__(self, x: jax.Array, c_noise: jax.Array, train: bool = True) -> jax.Array:
    """Network output for noisy images x at noise conditioning c_noise.

    Args:
      x: [B, image_size, image_size, num_channels].
      c_noise: [B], from `SDE.c_noise` (see the module docstring).
      train: enables dropout (needs rngs={"dropout": key}).

    Returns:
      [B, image_size, image_size, num_channels].
    """
    layers.check_input_shape(x, self.image_size, self.num_channels)
    act = get_act(self.nonlinearity)
    nf = self.nf
    num_resolutions = len(self.ch_mult)
    channels = x.shape[-1]

    # Noise-level embedding.
    if self.embedding_type == "fourier":
      temb = layerspp.GaussianFourierProjection(embedding_size=nf, scale=self.fourier_scale)(
        jnp.log(c_noise)
      )
    else:
      temb = layers.get_timestep_embedding(c_noise, nf)
    if self.conditional:
      temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
      temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))
    else:
      temb = None

    attn_block = functools.partial(
      layerspp.AttnBlockpp, init_scale=self.init_scale, skip_rescale=self.skip_rescale
    )
    resample = {"fir": self.fir, "fir_kernel": self.fir_kernel}
    upsample = functools.partial(layerspp.Upsample, with_conv=self.resamp_with_conv, **resample)
    downsample = functools.partial(layerspp.Downsample, with_conv=self.resamp_with_conv, **resample)
    # The output pyramid is up-sampled without a convolution for output_skip, with one for residual;
    # likewise the input pyramid on the way down.
    pyramid_upsample = functools.partial(
      layerspp.Upsample, with_conv=self.progressive == "residual", **resample
    )
    pyramid_downsample = functools.partial(
      layerspp.Downsample, with_conv=self.progressive_input == "residual", **resample
    )
    combine = functools.partial(layerspp.Combine, method=self.progressive_combine)
    block_options = {
      "act": act,
      "dropout": self.dropout,
      "init_scale": self.init_scale,
      "skip_rescale": self.skip_rescale,
    }
    if self.resblock_type == "ddpm":
      resnet_block = functools.partial(layerspp.ResnetBlockDDPMpp, **block_options)
    else:
      resnet_block = functools.partial(layerspp.ResnetBlockBigGANpp, **block_options, **resample)

    if not self.centered:
      x = 2.0 * x - 1.0  # data in [0, 1] -> [-1, 1]

    # Down-sampling path.
    input_pyramid = x if self.progressive_input != "none" else None
    hs = [conv3x3(x, nf)]
    for i_level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = resnet_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block()(h)
        hs.append(h)
      if i_level != num_resolutions - 1:
        if self.resblock_type == "ddpm":
          h = downsample()(hs[-1])
        else:
          h = resnet_block(down=True)(hs[-1], temb, train)
        if self.progressive_input == "input_skip":
          input_pyramid = pyramid_downsample()(input_pyramid)
          h = combine()(input_pyramid, h)
        elif self.progressive_input == "residual":
          input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
          input_pyramid = rescale_sum(input_pyramid, h, self.skip_rescale)
          h = input_pyramid
        hs.append(h)

    # Bottleneck.
    h = hs[-1]
    h = resnet_block()(h, temb, train)
    h = attn_block()(h)
    h = resnet_block()(h, temb, train)

    # Up-sampling path.
    pyramid = None
    for i_level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = resnet_block(out_ch=nf * self.ch_mult[i_level])(
          jnp.concatenate([h, hs.pop()], axis=-1), temb, train
        )
      if h.shape[1] in self.attn_resolutions:
        h = attn_block()(h)

      if self.progressive == "output_skip":
        if pyramid is not None:
          pyramid = pyramid_upsample()(pyramid)
        normed = act(group_norm(num_groups_for(h.shape[-1]))(h))
        out = conv3x3(normed, channels, use_bias=True, init_scale=self.init_scale)
        pyramid = out if pyramid is None else pyramid + out
      elif self.progressive == "residual":
        if pyramid is None:  # lowest resolution: start the pyramid from the features
          normed = act(group_norm(num_groups_for(h.shape[-1]))(h))
          pyramid = conv3x3(normed, h.shape[-1], use_bias=True)
        else:
          pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
          pyramid = rescale_sum(pyramid, h, self.skip_rescale)
          h = pyramid

      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = upsample()(h)
        else:
          h = resnet_block(up=True)(h, temb, train)

    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = act(group_norm(num_groups_for(h.shape[-1]))(h))
      h = conv3x3(h, channels, init_scale=self.init_scale)

    if self.scale_by_sigma:
      if self.embedding_type == "fourier":
        sigma = c_noise
      else:
        sigmas = layers.discrete_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
        sigma = sigmas[c_noise.astype(jnp.int32)]
      h = h / sigma.reshape(-1, 1, 1, 1).astype(h.dtype)
    return h
