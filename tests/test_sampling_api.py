"""sampling.py: the config edge, registries, bad input, per-example keys and NFE bookkeeping.

Runs in float64 (the `x64` fixture) except where a test says otherwise; SDEs are built inside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import closed_form
import sampling
import sde_lib
from configs import default_toy_configs

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def identity(x):
  return x


@sampling.register_predictor("test_time_recorder")
class TimeRecorder(sampling.Predictor):
  """A user's predictor (registered in a test module): x_mean records the time of the step."""

  nfe = 0

  def update(self, key, x, t):
    return x, jnp.broadcast_to(t[:, None], x.shape)


def config_with(**sampling_fields):
  config = default_toy_configs.get_default_configs()
  config.sampling.update(sampling_fields)
  return config


def gaussian_setup(sde):
  return closed_form.gaussian_score_fn(sde, MU, COV)


def test_registered_predictor_is_chosen_by_config_and_the_grid_ends_at_eps():
  sde = sde_lib.VPSDE(N=50)
  config = config_with(predictor="test_time_recorder", corrector="none", noise_removal=True)
  sample = sampling.get_sampler(config, sde, gaussian_setup(sde), (3, 2), identity, eps=0.02)
  x, nfe = jax.jit(sample)(jax.random.key(0), None)
  # noise_removal returns the last x_mean, which this predictor sets to the last time: eps.
  np.testing.assert_allclose(np.asarray(x), 0.02, rtol=1e-12)
  assert int(nfe) == 0


def test_linear_timesteps_run_from_T_to_eps():
  times = np.asarray(sampling.linear_timesteps(1.0, 1e-3, 1000))
  assert times.shape == (1000,)
  assert times[0] == 1.0 and abs(times[-1] - 1e-3) < 1e-15
  np.testing.assert_allclose(np.diff(times), -(1.0 - 1e-3) / 999, rtol=1e-9)


@pytest.mark.parametrize(
  ("predictor", "corrector", "n_steps", "expected"),
  [
    ("euler_maruyama", "none", 3, 40),
    ("reverse_diffusion", "langevin", 3, 40 * 4),
    ("none", "ald", 2, 40 * 2),
    ("ancestral_sampling", "langevin_per_example", 1, 40 * 2),
  ],
)
def test_pc_nfe_counts_score_evaluations(predictor, corrector, n_steps, expected):
  sde = sde_lib.VESDE(N=40)
  score_fn = gaussian_setup(sde)
  calls = []

  def counting_score_fn(params, x, t, **kwargs):
    jax.debug.callback(lambda t: calls.append(1), t)
    return score_fn(params, x, t, **kwargs)

  config = config_with(predictor=predictor, corrector=corrector, n_steps_each=n_steps)
  sample = sampling.get_sampler(config, sde, counting_score_fn, (4, 2), identity, eps=1e-3)
  x, nfe = jax.jit(sample)(jax.random.key(0), None)
  jax.block_until_ready(x)
  assert int(nfe) == expected == len(calls)


@pytest.mark.parametrize(
  "solver",
  ["dopri5", *(pytest.param(s, marks=pytest.mark.slow) for s in ("tsit5", "bosh3", "dopri8"))],
)
def test_ode_nfe_equals_the_evaluations_diffrax_made(solver):
  # Under vmap the callback fires once per example per evaluation of the batch: the count is
  # B * nfe, where nfe = n0 + k * max_i steps_i (the examples below need different step counts).
  sde = sde_lib.VPSDE()
  score_fn = gaussian_setup(sde)
  calls = []

  def counting_score_fn(params, x, t, **kwargs):
    jax.debug.callback(lambda t: calls.append(1), t)
    return score_fn(params, x, t, **kwargs)

  config = config_with(method="ode", ode_solver=solver, noise_removal=True)
  sample = sampling.get_sampler(config, sde, counting_score_fn, (5, 2), identity, eps=1e-3)
  x, nfe = jax.jit(sample)(jax.random.key(1), None)
  jax.block_until_ready(x)
  # The ODE evaluates the score vmapped over 5 examples; noise removal once on the batch.
  assert int(nfe) > 1
  assert len(calls) == 5 * (int(nfe) - 1) + 1


def test_per_example_keys_do_not_depend_on_the_batch():
  sde = sde_lib.VESDE(N=30)
  score_fn = gaussian_setup(sde)
  build = lambda shape: sampling.get_pc_sampler(
    sde,
    score_fn,
    shape,
    sampling.EulerMaruyamaPredictor,
    sampling.AnnealedLangevinCorrector,
    identity,
    snr=0.16,
  )
  key = jax.random.key(5)
  whole, _ = jax.jit(build((12, 2)))(key, None)
  tail, _ = jax.jit(build((7, 2)))(key, None, 5)
  # Each example uses only its own key and per-example arithmetic: equal up to round-off.
  np.testing.assert_allclose(tail, whole[5:], rtol=1e-12, atol=1e-12)
  other, _ = jax.jit(build((12, 2)))(jax.random.key(6), None)
  assert np.abs(np.asarray(other) - np.asarray(whole)).min() > 0


def test_pc_and_ode_samplers_start_from_the_same_prior_sample():
  # With a zero score, the VE probability-flow ODE has zero drift and the "none" x "none" PC
  # sampler does nothing: both return their prior sample, which comes from the same keys.
  sde = sde_lib.VESDE(N=20)
  keys = sampling.example_keys(jax.random.key(2), 6)
  z = sampling.prior_sample(sde, sampling.split(keys)[0], (6, 3))
  zero_score_fn = lambda params, x, t, **kw: jnp.zeros_like(x)
  pc = sampling.get_pc_sampler(
    sde, zero_score_fn, (6, 3), sampling.NonePredictor, sampling.NoneCorrector, identity, snr=0.1
  )
  ode = sampling.get_ode_sampler(sde, zero_score_fn, (6, 3), identity)
  for sample in (pc, ode):
    x, _ = sample(jax.random.key(2), None)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(z))
  assert np.std(np.asarray(z)) > 10  # drawn from the VE prior N(0, 50^2 I)


# --- Bad input. ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("predictor", "heun", r"config\.sampling\.predictor.*ancestral_sampling, euler_maruyama"),
    ("corrector", "hmc", r"config\.sampling\.corrector.*ald, langevin"),
    ("method", "ddim", r"config\.sampling\.method.*ode, pc"),
  ],
)
def test_unknown_names_name_the_field_and_the_choices(field, value, message):
  sde = sde_lib.VPSDE()
  config = config_with(**{field: value})
  with pytest.raises(ValueError, match=message):
    sampling.get_sampler(config, sde, gaussian_setup(sde), (4, 2), identity, eps=1e-3)


def test_unknown_ode_solver():
  sde = sde_lib.VPSDE()
  config = config_with(method="ode", ode_solver="rk45")
  with pytest.raises(ValueError, match=r"config\.sampling\.ode_solver.*dopri5"):
    sampling.get_sampler(config, sde, gaussian_setup(sde), (4, 2), identity, eps=1e-3)


@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 2.0])
@pytest.mark.parametrize("method", ["pc", "ode"])
def test_eps_outside_0_T(eps, method):
  sde = sde_lib.VESDE()
  with pytest.raises(ValueError, match=r"config\.sampling\.eps.*\(0, T=1\.0\)"):
    sampling.get_sampler(
      config_with(method=method), sde, gaussian_setup(sde), (4, 2), identity, eps=eps
    )


def test_ancestral_sampling_of_an_sde_without_a_chain_raises_the_sde_error_at_build():
  sde = sde_lib.subVPSDE()
  config = config_with(predictor="ancestral_sampling")
  with pytest.raises(NotImplementedError, match="discrete Markov chain.*subVPSDE"):
    sampling.get_sampler(config, sde, gaussian_setup(sde), (4, 2), identity, eps=1e-3)


def test_ancestral_sampling_has_no_probability_flow():
  sde = sde_lib.VPSDE()
  config = config_with(predictor="ancestral_sampling", probability_flow=True)
  with pytest.raises(ValueError, match=r"config\.sampling\.probability_flow"):
    sampling.get_sampler(config, sde, gaussian_setup(sde), (4, 2), identity, eps=1e-3)


@pytest.mark.parametrize("shape", [(4,), (0, 2), ()])
def test_bad_shapes(shape):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match=r"\[batch, \.\.\.\]"):
    sampling.get_sampler(config_with(), sde, gaussian_setup(sde), shape, identity, eps=1e-3)
