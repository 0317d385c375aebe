"""models/mlp.py: shapes, parameter count, noise conditioning, jit, dropout, and the score bridge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import sde_lib
from configs import default_toy_configs
from models import mlp as mlp_lib
from models import utils as mutils


def toy_config(**model) -> ml_collections.ConfigDict:
  config = default_toy_configs.get_default_configs()
  config.model.update(hidden=32, num_layers=3, embedding_dim=16, fourier_scale=1.0)
  config.model.update(model)
  return config


def init(model, shape, c_noise=None):
  x = jnp.zeros(shape)
  c = jnp.ones((shape[0],)) if c_noise is None else c_noise
  return model.init(jax.random.PRNGKey(0), x, c)["params"]


def test_registered_and_parameter_count():
  config = toy_config()
  model = mutils.get_model(config)
  assert isinstance(model, mlp_lib.MLP) and mutils.MODELS.get("mlp") is mlp_lib.MLP
  params = init(model, (4, 2))
  count = sum(p.size for p in jax.tree.leaves(params))
  e, h, d, n = 16, 32, 2, 3
  # temb: Dense(e -> h), Dense(h -> h); each layer: Dense(in -> h) + Dense(h -> h); out: Dense(h -> d).
  expected = (e * h + h) + (h * h + h) + (d * h + h) + (n - 1) * (h * h + h)
  expected += n * (h * h + h) + (h * d + d)
  assert count == expected


@pytest.mark.parametrize("embedding_type", ["fourier", "positional"])
def test_output_shape_time_dependence_and_no_batch_mixing(embedding_type):
  model = mutils.get_model(toy_config(embedding_type=embedding_type))
  params = init(model, (4, 2))
  x = jnp.tile(jnp.array([[0.3, -1.2]]), (4, 1))
  c = jnp.array([1.0, 1.0, 50.0, 500.0])
  out = model.apply({"params": params}, x, c)
  assert out.shape == (4, 2) and out.dtype == jnp.float32
  # Same input and noise level -> same output; other noise levels -> other outputs.
  np.testing.assert_array_equal(out[0], out[1])
  assert float(jnp.abs(out[0] - out[2]).max()) > 1e-4
  assert float(jnp.abs(out[2] - out[3]).max()) > 1e-4
  # Each example's output depends on its own (x, c_noise) only.
  c2 = c.at[3].set(5.0)
  out2 = model.apply({"params": params}, x, c2)
  np.testing.assert_array_equal(out2[:3], out[:3])


def test_images_are_flattened_and_reshaped():
  config = toy_config()
  config.data.dim = None
  model = mutils.get_model(config)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  params = init(model, x.shape)
  assert params["Dense_2"]["kernel"].shape == (64, 32)  # the first hidden layer sees 8 * 8 * 1
  out = model.apply({"params": params}, x, jnp.ones(3))
  assert out.shape == x.shape
  flat = model.apply({"params": params}, x.reshape(3, 64), jnp.ones(3))
  np.testing.assert_array_equal(out.reshape(3, 64), flat)


def test_jit_matches_eager_and_dropout_uses_the_rng():
  model = mutils.get_model(toy_config(dropout=0.5))
  params = init(model, (8, 2))
  x = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
  c = jnp.linspace(0.1, 900.0, 8)
  eager = model.apply({"params": params}, x, c)
  jitted = jax.jit(lambda p, x, c: model.apply({"params": p}, x, c))(params, x, c)
  # Same XLA ops in both modes; allow float32 reassociation differences only.
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
  key = jax.random.PRNGKey(3)
  train = lambda k: model.apply({"params": params}, x, c, train=True, rngs={"dropout": k})
  np.testing.assert_array_equal(train(key), train(key))
  assert float(jnp.abs(train(key) - eager).max()) > 1e-3
  assert float(jnp.abs(train(key) - train(jax.random.PRNGKey(4))).max()) > 1e-3


def test_score_fn_under_vp_uses_999t_and_noise_prediction():
  config = toy_config()
  sde = sde_lib.get_sde(config.sde)
  model = mutils.get_model(config)
  params = mutils.init_params(jax.random.PRNGKey(0), model, sde, (5, 2))
  score_fn = mutils.get_score_fn(sde, model, continuous=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  t = jnp.array([1e-3, 0.1, 0.4, 0.7, 1.0])
  score = score_fn(params, x, t)
  std = sde.marginal_prob(x, t)[1]
  output = model.apply({"params": params}, x, 999.0 * t)
  # VP networks predict the noise: score = -output / std(t) (float32 division: 1 ulp).
  np.testing.assert_allclose(score * std[:, None], -output, rtol=1e-5, atol=1e-6)
  assert jnp.all(jnp.isfinite(jax.jit(score_fn)(params, x, t)))


def test_score_fn_under_ve_sees_sigma_and_scale_by_sigma_divides_by_it():
  config = toy_config(scale_by_sigma=True)
  config.sde = ml_collections.ConfigDict({"name": "vesde", "sigma_min": 0.01, "sigma_max": 50.0})
  sde = sde_lib.get_sde(config.sde)
  model = mutils.get_model(config)
  params = mutils.init_params(jax.random.PRNGKey(0), model, sde, (5, 2))
  score_fn = mutils.get_score_fn(sde, model, continuous=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  t = jnp.array([0.0, 0.25, 0.5, 0.75, 1.0])
  sigma = 0.01 * 5000.0**t
  unscaled = model.clone(scale_by_sigma=False)
  raw = unscaled.apply({"params": params}, x, sigma)
  # VE networks output the score; with scale_by_sigma it is raw / sigma(t) (float32: ~1e-6 rel.).
  np.testing.assert_allclose(score_fn(params, x, t) * sigma[:, None], raw, rtol=1e-4, atol=1e-6)


def test_embeddings_closed_form():
  c = jnp.array([0.0, 3.0])
  pos = mlp_lib.positional_embedding(c, 8)
  # At c = 0 every sine is 0 and every cosine 1; the first frequency is 1, so sin(3) appears.
  np.testing.assert_array_equal(pos[0], [0, 0, 0, 0, 1, 1, 1, 1])
  assert float(pos[1, 0]) == pytest.approx(np.sin(3.0), abs=1e-6)
  # The last frequency is 1 / 10000: sin(3e-4).
  assert float(pos[1, 3]) == pytest.approx(np.sin(3e-4), rel=1e-4)
  four = mlp_lib.fourier_embedding(jnp.array([0.7, -2.0]), jnp.array([0.5, 1.5, 3.0]))
  # Each (sin, cos) pair has unit norm, so |features|^2 = number of frequencies.
  np.testing.assert_allclose(jnp.sum(four**2, axis=1), 3.0, rtol=1e-6)


@pytest.mark.parametrize(
  "change, field",
  [
    (dict(embedding_type="learned"), "config.model.embedding_type"),
    (dict(embedding_dim=15), "config.model.embedding_dim"),
    (dict(dropout=1.0), "config.model.dropout"),
  ],
)
def test_config_errors_name_the_field(change, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    mutils.get_model(toy_config(**change))


def test_input_dimension_must_match_config_data_dim():
  model = mutils.get_model(toy_config())  # config.data.dim = 2
  with pytest.raises(ValueError, match=r"config\.data\.dim = 2"):
    init(model, (4, 3))
