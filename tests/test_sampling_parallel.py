"""Samplers under data parallelism: the same keys give the same samples on 1 or 8 devices.

tests/conftest.py gives 8 virtual CPU devices. A sampler built for the per-device shape and run
with `sampling.data_parallel_sampler` (shard_map over every device) or under `jax.pmap` must
reproduce the one-device sampler of the whole batch. Float32, the default precision.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import closed_form
import sampling
import sde_lib

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])
BATCH = 32


def identity(x):
  return x


def build(kind: str, sde, predictor: str, corrector: str, batch: int):
  score_fn = closed_form.gaussian_score_fn(sde, MU, COV)
  if kind == "ode":
    return sampling.get_ode_sampler(sde, score_fn, (batch, 2), identity)
  return sampling.get_pc_sampler(
    sde,
    score_fn,
    (batch, 2),
    sampling.PREDICTORS.get(predictor),
    sampling.CORRECTORS.get(corrector),
    identity,
    snr=0.16,
  )


CASES = [
  # (kind, SDE, predictor, corrector, bit-equal?)
  ("pc", "vpsde", "euler_maruyama", "none", True),
  ("pc", "vesde", "ancestral_sampling", "ald", False),
  ("pc", "vesde", "reverse_diffusion", "langevin", False),
  ("ode", "vpsde", None, None, True),
]


def make_sde(name):
  return {"vpsde": sde_lib.VPSDE, "vesde": sde_lib.VESDE}[name](N=50)


@pytest.mark.parametrize(("kind", "sde_name", "predictor", "corrector", "bit_equal"), CASES)
def test_data_parallel_sampler_reproduces_the_one_device_run(
  kind, sde_name, predictor, corrector, bit_equal
):
  assert jax.device_count() == 8
  sde = make_sde(sde_name)
  key = jax.random.key(3)
  x1, nfe1 = jax.jit(build(kind, sde, predictor, corrector, BATCH))(key, None)
  per_device = BATCH // jax.device_count()
  run = sampling.data_parallel_sampler(
    build(kind, sde, predictor, corrector, per_device), per_device
  )
  x8, nfe8 = run(key, None)
  assert x8.shape == (BATCH, 2) and len(x8.sharding.device_set) == 8
  assert int(nfe8) == int(nfe1)
  if bit_equal:
    # Per-example keys and per-example arithmetic: bit for bit (measured on this XLA CPU).
    np.testing.assert_array_equal(np.asarray(x8), np.asarray(x1))
  else:
    # The Langevin corrector's batch mean is summed in another order on 8 devices (1 ulp), and
    # XLA may vectorise elementwise maths differently for 4 and 32 rows: float32 round-off,
    # measured up to 5e-7 after 100 steps.
    np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), rtol=1e-5, atol=1e-5)
    assert np.std(np.asarray(x1)) > 0.1


def test_pmap_with_batch_axis_reproduces_the_one_device_run():
  sde = make_sde("vesde")
  key = jax.random.PRNGKey(4)
  x1, _ = jax.jit(build("pc", sde, "reverse_diffusion", "langevin", BATCH))(key, None)
  per_device = BATCH // jax.device_count()
  sample = build("pc", sde, "reverse_diffusion", "langevin", per_device)

  @functools.partial(jax.pmap, axis_name="devices", in_axes=(0, None))
  def run(key, params):
    with sampling.batch_axis("devices"):
      return sample(key, params, jax.lax.axis_index("devices") * per_device)

  # pmap wants a mapped argument: every device gets the same (raw, uint32[2]) key.
  x8, nfe = run(jnp.tile(key, (8, 1)), None)
  np.testing.assert_allclose(np.asarray(x8).reshape(BATCH, 2), np.asarray(x1), rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(nfe) == 2 * sde.N)


def test_without_batch_axis_the_langevin_step_uses_the_local_batch():
  # The collective matters: averaging the norms over each device's 4 examples only gives
  # different step sizes, hence different samples (which is why data_parallel_sampler sets it).
  sde = make_sde("vesde")
  key = jax.random.PRNGKey(4)
  x1, _ = jax.jit(build("pc", sde, "reverse_diffusion", "langevin", BATCH))(key, None)
  per_device = BATCH // jax.device_count()
  sample = build("pc", sde, "reverse_diffusion", "langevin", per_device)

  @functools.partial(jax.pmap, axis_name="devices", in_axes=(0, None))
  def run(key, params):
    return sample(key, params, jax.lax.axis_index("devices") * per_device)

  x8, _ = run(jnp.tile(key, (8, 1)), None)
  assert np.abs(np.asarray(x8).reshape(BATCH, 2) - np.asarray(x1)).max() > 1e-3


def test_batch_mean_is_the_global_mean():
  v = jnp.arange(16.0)
  assert float(sampling.batch_mean(v)) == 7.5
  per_device = jax.pmap(lambda v: _with_axis(v), axis_name="devices")(v.reshape(8, 2))
  np.testing.assert_array_equal(np.asarray(per_device), 7.5)


def _with_axis(v):
  with sampling.batch_axis("devices"):
    return sampling.batch_mean(v)
