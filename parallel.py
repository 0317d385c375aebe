"""Data parallelism over every device of every host: the one place that knows how.

Per-device code (a train step, a sampler) is written as if it ran on one device holding its shard
of the batch; it may average with `lax.pmean(..., AXIS)` and fold `lax.axis_index(AXIS)` into keys.
`data_parallel` maps it over a 1-D mesh of all devices with `jax.shard_map` under `jax.jit`
(DESIGN.md, "Data parallelism"): inputs and outputs are global `jax.Array`s whose leading axis is
split over the devices (`SHARDED`) or that every device holds whole (`REPLICATED`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"
SHARDED = P(AXIS)
REPLICATED = P()


@functools.cache
def mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every host, axis name `AXIS`."""
  return jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def data_parallel(
  fn: Callable[..., Any],
  in_specs: Any,
  out_specs: Any,
  *,
  donate_argnums: tuple[int, ...] = (),
  compiler_options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
  """Jits `fn` and runs it on every device, each on its shard.

  Args:
    fn: the per-device function.
    in_specs: one spec per positional argument (a pytree prefix): `SHARDED` or `REPLICATED`.
    out_specs: likewise for the outputs.
    donate_argnums: arguments whose buffers the call may reuse (e.g. the train state).
    compiler_options: XLA options for this function only (see benchmarks/).
  """
  mapped = jax.shard_map(fn, mesh=mesh(), in_specs=in_specs, out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums, compiler_options=compiler_options)


def replicate(tree: Any) -> Any:
  """Places a pytree on every device whole (e.g. parameters)."""
  return jax.device_put(tree, NamedSharding(mesh(), REPLICATED))


def shard(tree: Any, leading: int = 0) -> Any:
  """Turns host-local batches [local_devices, per_device, ...] into global sharded arrays.

  Each host passes its own part of the batch (the layout `datasets.get_dataset` yields); the result
  is a global `jax.Array` of shape [global_batch, ...] split over every device along that axis.
  With `leading` > 0 the arrays carry that many unsplit axes first, e.g. [steps, local_devices,
  per_device, ...] -> [steps, global_batch, ...] for several train steps in one call.
  """
  spec = P(*([None] * leading), AXIS)
  sharding = NamedSharding(mesh(), spec)
  local = jax.local_device_count()

  def to_global(x):
    x = np.asarray(x)
    if x.ndim < leading + 2 or x.shape[leading] != local:
      raise ValueError(
        f"A host-local batch must be shaped [{'steps, ' * leading}local_devices={local}, "
        f"per_device, ...]; got {x.shape}."
      )
    merged = x.reshape(x.shape[:leading] + (-1,) + x.shape[leading + 2 :])
    return jax.make_array_from_process_local_data(sharding, merged)

  return jax.tree.map(to_global, tree)


def per_device(n: int, field: str) -> int:
  """`n` split evenly over every device; the error names the config `field` to fix otherwise."""
  devices = jax.device_count()
  if n % devices:
    raise ValueError(
      f"{field} = {n} must be divisible by the number of devices ({devices}); "
      f"use a multiple of {devices}."
    )
  return n // devices
