"""Model registry, parameter initialisation and the bridge from network outputs to scores.

Networks are `flax.linen` modules called as `model.apply({"params": p}, x, c_noise, train=...)`:
`x` is [B, H, W, C] (or [B, D] for vector data) and `c_noise` [B] is the SDE's noise conditioning
(`SDE.c_noise`). They return a raw output shaped like `x` and know nothing about SDEs;
`get_score_fn` turns that output into a score with `SDE.output_to_score`, the only place where
models meet the maths core.

Each registered model class has a `from_config(config)` classmethod that reads its typed fields from
the config (mostly `config.model`) in one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from utils import Registry

MODELS: Registry[type[nn.Module]] = Registry("model", "config.model.name")
register_model = MODELS.register

# Modules that define the built-in models; imported before any lookup so the registry is complete.
_BUILTIN_MODULES = (
  "models.mlp",
  "models.ncsnpp",
  "models.ddpm",
  "models.ncsnv2",
  "models.ncsn",
  "models.wideresnet_noise_conditional",
)

ScoreFn = Callable[..., jax.Array]


def _import_builtin_models() -> None:
  for module in _BUILTIN_MODULES:
    importlib.import_module(module)


def get_model(config: Any) -> nn.Module:
  """Builds the network named by `config.model.name` through its class's `from_config`."""
  _import_builtin_models()
  return MODELS.get(config.model.name).from_config(config)


def init_variables(
  key: jax.Array, model: nn.Module, sde: Any, shape: tuple[int, ...], continuous: bool = True
) -> dict[str, Any]:
  """Initialises every variable collection of `model` for inputs of `shape` [B, ...].

  Returns a dict with the trained "params" and any non-trainable collections, e.g. "constants"
  (the fixed random Fourier weights of NCSN++). Networks re-derive their "constants" when `apply`
  is not given them, so `{"params": p}` alone suffices for a network initialised here; a network
  whose constants came from elsewhere (an imported checkpoint) needs them passed to `get_score_fn`.

  The noise conditioning is the SDE's own (`sde.c_noise`), so its dtype (float time or integer
  noise-level index) is the one the network will see.
  """
  params_key, dropout_key = jax.random.split(key)
  x = jnp.zeros(shape, jnp.float32)
  c_noise = sde.c_noise(jnp.full((shape[0],), 0.5 * sde.T), continuous)
  return dict(model.init({"params": params_key, "dropout": dropout_key}, x, c_noise, train=False))


def init_params(
  key: jax.Array, model: nn.Module, sde: Any, shape: tuple[int, ...], continuous: bool = True
) -> Any:
  """Initialises the trained parameters ("params" collection) of `model`; see `init_variables`."""
  return init_variables(key, model, sde, shape, continuous)["params"]


def get_score_fn(
  sde: Any, model: nn.Module, continuous: bool = True, constants: dict[str, Any] | None = None
) -> ScoreFn:
  """Wraps a network as `score_fn(params, x, t, *, train=False, rng=None)` (DESIGN.md).

  Args:
    sde: the `sde_lib.SDE` the network was trained for; it fixes the noise conditioning
      (`c_noise`) and how the output becomes a score (`output_to_score`).
    model: a registered network.
    continuous: whether the network was trained on continuous time or on the SDE's discrete levels.
    constants: non-trainable variable collections passed to the network with the params, e.g.
      {"constants": {...}} from `init_variables` or an imported checkpoint; None lets the network
      derive its own (see `init_variables`).

  Returns:
    `score_fn(params, x [B, ...], t [B], *, train=False, rng=None) -> [B, ...]`; `rng` feeds
    dropout when `train=True`.
  """

  def score_fn(params, x, t, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    c_noise = sde.c_noise(t, continuous)
    rngs = {"dropout": rng} if (train and rng is not None) else {}
    variables = {"params": params, **(constants or {})}
    output = model.apply(variables, x, c_noise, train=train, rngs=rngs)
    return sde.output_to_score(output, x, t, continuous)

  return score_fn
