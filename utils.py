"""Small helpers shared by the maths core: named registries and per-example broadcasting.

This module imports jax only, so every part of the maths core may depend on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")


class Registry(Generic[T]):
  """A name -> object table for one kind of pluggable piece (SDE, predictor, model, ...).

  A user adds their own piece from any module with the `register` decorator; the config then
  selects it by name. Unknown names fail with the config field to fix and the valid choices.

  Args:
    kind: what is registered, for messages ("SDE", "predictor").
    config_field: the config field that selects an entry ("config.sde.name").
  """

  def __init__(self, kind: str, config_field: str):
    self.kind = kind
    self.config_field = config_field
    self._entries: dict[str, T] = {}

  def register(self, name: str | None = None) -> Callable[[T], T]:
    """Decorator registering a class or function under `name` (default: its `__name__`)."""

    def decorator(obj: T) -> T:
      key = (name or obj.__name__).lower()
      if key in self._entries and self._entries[key] is not obj:
        raise ValueError(
          f"{self.kind} {key!r} is already registered to {self._entries[key]!r}; "
          "choose another name."
        )
      self._entries[key] = obj
      return obj

    return decorator

  def get(self, name: str) -> T:
    key = str(name).lower()
    if key not in self._entries:
      raise ValueError(
        f"Unknown {self.kind} {name!r} in {self.config_field}. "
        f"Valid choices: {', '.join(sorted(self._entries))}. A {self.kind} of your own must be "
        "registered (with its register decorator) in a module your config imports."
      )
    return self._entries[key]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return str(name).lower() in self._entries


def build_from_config(registry: Registry, config: Mapping[str, Any], section: str) -> Any:
  """Instantiates `registry.get(config['name'])` with the other fields of `config` as arguments.

  Args:
    registry: where the class is registered.
    config: a mapping (e.g. `config.sde`) holding `name` and the constructor's keyword arguments.
    section: the config section's dotted name, for error messages ("config.sde").

  Raises:
    ValueError: naming the field when `name` is missing, unknown, or an argument is not accepted.
  """
  fields = dict(config)
  if "name" not in fields:
    raise ValueError(f"{section}.name is not set. Valid choices: {', '.join(registry.names())}.")
  cls = registry.get(fields.pop("name"))
  params = inspect.signature(cls).parameters
  takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
  for key in fields:
    if key not in params and not takes_kwargs:
      raise ValueError(
        f"{section}.{key} is not an argument of {cls.__name__} "
        f"(it takes: {', '.join(accepted) or 'no arguments'})."
      )
  return cls(**fields)


def append_dims(x: jax.Array, ndim: int) -> jax.Array:
  """Appends trailing unit axes to per-example values `x` [B] so they broadcast against [B, ...].

  Args:
    x: an array of shape [B] (or a scalar, returned as is).
    ndim: the number of axes of the array `x` will multiply.
  """
  x = jnp.asarray(x)
  if x.ndim > ndim:
    raise ValueError(f"append_dims: value of shape {x.shape} has more than {ndim} axes.")
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def batch_mul(a: jax.Array, x: jax.Array) -> jax.Array:
  """Multiplies each example of `x` [B, ...] by the per-example scalar `a` [B]."""
  return append_dims(a, x.ndim) * x


def sum_except_batch(x: jax.Array) -> jax.Array:
  """Sums `x` [B, ...] over every axis but the first; returns [B]."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def check_eps(eps: float, T: float, field: str) -> None:
  """Checks a smallest time `eps` lies in (0, T); the error names the config field to fix."""
  if not 0.0 < float(eps) < float(T):
    raise ValueError(f"{field} = {eps} must lie in the open interval (0, T={T}).")
