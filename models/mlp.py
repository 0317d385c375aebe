"""A time-conditioned MLP score network for vector data (the 2-D toys) and flattened images.

    c_noise -> embedding -> Dense -> SiLU -> Dense = temb                      [B, hidden]
    x [B, ...] -> flatten [B, D] -> num_layers x (Dense(h) + Dense(SiLU(temb)) -> SiLU -> dropout)
             -> Dense(D) -> reshape to x's shape (divided by c_noise if scale_by_sigma)

The network returns a raw output; `models.utils.get_score_fn` turns it into a score through the
SDE (VP: a noise prediction, -output / std; VE: the score itself).

Noise conditioning. `c_noise` is whatever the SDE feeds networks (`SDE.c_noise`): sigma(t) in
[0.01, 50] for the VE SDE, 999 t for VP and sub-VP. Two embeddings:
- "fourier" (default): Gaussian Fourier features (Tancik et al. 2020; NCSN++'s embedding) of
  log(max(c_noise, 1e-4)). The log maps both conventions to a range of about 12 units (VE:
  [-4.6, 3.9]; VP with t >= 1e-5: [-4.6, 6.9]); `fourier_scale` is the std of the random
  frequencies in cycles per unit of log c_noise. The paper's 16 (for NCSN++ on images) makes very
  high frequencies there; about 1 suits these small networks.
- "positional": the sinusoidal embedding of DDPM / Transformers (periods up to 10,000) of c_noise as
  given, suited to VP's 999 t.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.utils import register_model

EMBEDDING_TYPES = ("fourier", "positional")
_LOG_FLOOR = 1e-4  # c_noise below this (t = 0 for VP, a level index 0) is embedded as this


def fourier_embedding(u: jax.Array, frequencies: jax.Array) -> jax.Array:
  """Gaussian Fourier features [sin(2 pi u w), cos(2 pi u w)]: u [B], w [F] -> [B, 2F]."""
  angles = 2 * jnp.pi * u[:, None] * frequencies[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def positional_embedding(c: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020): c [B] -> [B, dim].

  Frequencies exp(-log(max_period) k / (dim/2 - 1)), k = 0 .. dim/2 - 1; [sin, cos] concatenated.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angles = c[:, None].astype(jnp.float32) * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


@register_model("mlp")
class MLP(nn.Module):
  """Time-conditioned MLP (see the module docstring).

  Attributes:
    hidden: width of every hidden layer and of the time embedding.
    num_layers: number of hidden layers (Dense + SiLU), each conditioned on the time embedding.
    embedding_dim: size of the Fourier / sinusoidal features of c_noise (even).
    embedding_type: "fourier" (of log c_noise) or "positional" (of c_noise).
    fourier_scale: std of the Fourier frequencies (cycles per unit of log c_noise).
    dropout: dropout rate after each hidden layer when `train=True` (needs a "dropout" rng).
    scale_by_sigma: divide the output by c_noise, for VE SDEs whose c_noise is sigma(t) (the
      score of data perturbed by sigma scales like 1 / sigma; NCSN++'s option of the same name).
    dim: expected number of input features per example (config.data.dim), checked if set.
  """

  hidden: int = 256
  num_layers: int = 4
  embedding_dim: int = 128
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  dropout: float = 0.0
  scale_by_sigma: bool = False
  dim: int | None = None

  @classmethod
  def from_config(cls, config: Any) -> MLP:
    """Reads config.model (hidden, num_layers, embedding_dim, embedding_type, fourier_scale,
    dropout, scale_by_sigma) and config.data.dim."""
    model = config.model
    mlp = cls(
      hidden=int(model.get("hidden", cls.hidden)),
      num_layers=int(model.get("num_layers", cls.num_layers)),
      embedding_dim=int(model.get("embedding_dim", cls.embedding_dim)),
      embedding_type=str(model.get("embedding_type", cls.embedding_type)),
      fourier_scale=float(model.get("fourier_scale", cls.fourier_scale)),
      dropout=float(model.get("dropout", cls.dropout)),
      scale_by_sigma=bool(model.get("scale_by_sigma", cls.scale_by_sigma)),
      dim=None if config.data.get("dim", None) is None else int(config.data.dim),
    )
    mlp.validate()
    return mlp

  def validate(self) -> None:
    """Raises ValueError naming the config field of an out-of-range option."""
    if self.embedding_type not in EMBEDDING_TYPES:
      raise ValueError(
        f"config.model.embedding_type = {self.embedding_type!r}. "
        f"Valid choices: {', '.join(EMBEDDING_TYPES)}."
      )
    if self.embedding_dim < 2 or self.embedding_dim % 2:
      raise ValueError(f"config.model.embedding_dim = {self.embedding_dim} must be even and >= 2.")
    if self.hidden < 1 or self.num_layers < 1:
      raise ValueError(
        f"config.model.hidden = {self.hidden} and config.model.num_layers = {self.num_layers} "
        "must be positive."
      )
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"config.model.dropout = {self.dropout} must lie in [0, 1).")

  def embed(self, c_noise: jax.Array) -> jax.Array:
    """Features of the noise conditioning: c_noise [B] -> [B, embedding_dim]."""
    c_noise = c_noise.astype(jnp.float32)
    if self.embedding_type == "fourier":
      # Fixed random features: one draw of N(0, fourier_scale^2) frequencies (seed 0), a constant
      # of the architecture rather than a parameter, so no optimiser or weight decay touches it.
      frequencies = self.fourier_scale * np.random.default_rng(0).standard_normal(
        self.embedding_dim // 2
      )
      u = jnp.log(jnp.maximum(c_noise, _LOG_FLOOR))
      return fourier_embedding(u, jnp.asarray(frequencies, jnp.float32))
    return positional_embedding(c_noise, self.embedding_dim)

  @nn.compact
  def __call__(self, x: jax.Array, c_noise: jax.Array, train: bool = False) -> jax.Array:
    """Raw output of the network.

    Args:
      x: [B, D] vectors or [B, H, W, C] images (flattened to D = H W C).
      c_noise: [B] noise conditioning (`SDE.c_noise`).
      train: enables dropout.

    Returns:
      [B, ...], the shape of x.
    """
    self.validate()
    batch = x.shape[0]
    features = int(np.prod(x.shape[1:]))
    if self.dim is not None and features != self.dim:
      raise ValueError(
        f"The MLP got inputs with {features} features per example (shape {x.shape[1:]}), but "
        f"config.data.dim = {self.dim}."
      )
    c_noise = jnp.broadcast_to(jnp.asarray(c_noise), (batch,))
    temb = nn.Dense(self.hidden)(self.embed(c_noise))
    temb = nn.Dense(self.hidden)(nn.silu(temb))
    h = x.reshape(batch, features)
    for _ in range(self.num_layers):
      h = nn.Dense(self.hidden)(h) + nn.Dense(self.hidden)(nn.silu(temb))
      h = nn.silu(h)
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    out = nn.Dense(features)(h)
    if self.scale_by_sigma:
      out = out / c_noise.astype(out.dtype)[:, None]
    return out.reshape(x.shape)
