"""The DDPM U-Net (models/ddpm.py) on tiny shapes: layout, forward passes, score function, errors.

Its parameter count for vp/ddpm/cifar10 (35,218,947, the published implementation's) is checked
with the other paper configs in tests/test_ncsnpp.py. Networks here have random parameters drawn
in numpy over `jax.eval_shape` shapes (no slow init compilation, every layer active).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import sde_lib
from models import utils as model_utils
from models.ddpm import DDPM

# nf must be a multiple of 32: DDPM's group normalisation always has 32 groups.
TINY = {"nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,), "image_size": 8}
X = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
C_NOISE = jnp.array([3.0, 700.0])  # DDPM conditioning: t (N - 1)


def random_params(model, c_noise=C_NOISE, seed=0, scale=0.2):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0)}, X, c_noise, train=False)
  )["params"]
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def jitted(model, train=False):
  """The network as one compiled function of (params, c_noise, dropout key)."""
  return jax.jit(
    lambda p, c, key: model.apply({"params": p}, X, c, train=train, rngs={"dropout": key})
  )


def apply(model, params, c_noise, train=False, key=None):
  return jitted(model, train)(params, c_noise, jax.random.key(0) if key is None else key)


def test_parameter_names_follow_the_reference_layout():
  params = random_params(DDPM(**TINY))
  # Blocks: 1 + 1 down, 2 bottleneck, 2 + 2 up; resampling layers between the two resolutions.
  assert {k for k in params if not k.startswith(("ResnetBlockDDPM_", "AttnBlock_"))} == {
    "Dense_0",
    "Dense_1",
    "Conv_0",
    "Downsample_0",
    "Upsample_0",
    "GroupNorm_0",
    "Conv_1",
  }
  assert {k for k in params if k.startswith("ResnetBlockDDPM_")} == {
    f"ResnetBlockDDPM_{i}" for i in range(8)
  }
  # The first block keeps 32 channels (no shortcut); the second level's first doubles them: NIN_0.
  assert set(params["ResnetBlockDDPM_0"]) == {
    "GroupNorm_0",
    "Conv_0",
    "Dense_0",
    "GroupNorm_1",
    "Conv_1",
  }
  assert params["ResnetBlockDDPM_1"]["NIN_0"]["W"].shape == (32, 64)
  assert params["ResnetBlockDDPM_0"]["GroupNorm_0"]["scale"].shape == (32,)
  assert set(params["AttnBlock_0"]) == {"GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"}


@pytest.mark.parametrize(
  "options",
  [{}, {"resamp_with_conv": False, "nonlinearity": "relu"}, {"conditional": False}],
  ids=["ddpm", "no-resampling-conv", "unconditional"],
)
def test_tiny_network_compiles_and_depends_on_noise_level(options):
  model = DDPM(**TINY, **options)
  params = random_params(model)
  network = jitted(model)
  y = network(params, C_NOISE, jax.random.key(0))
  assert y.shape == X.shape and bool(jnp.all(jnp.isfinite(y)))
  y_swapped = network(params, C_NOISE[::-1], jax.random.key(0))
  if model.conditional:
    assert float(jnp.min(jnp.abs(y_swapped - y).max(axis=(1, 2, 3)))) > 1e-3
  else:
    np.testing.assert_array_equal(y_swapped, y)


def test_dropout_only_in_training():
  model = DDPM(**TINY, dropout=0.5)
  params = random_params(model)
  evaluation = apply(model, params, C_NOISE, train=False, key=jax.random.key(0))
  train = jitted(model, train=True)
  train_a = train(params, C_NOISE, jax.random.key(0))
  train_b = train(params, C_NOISE, jax.random.key(1))
  assert not np.allclose(train_a, evaluation) and not np.allclose(train_a, train_b)


def test_scale_by_sigma_divides_by_the_discrete_level():
  levels = {"continuous": False, "sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 10}
  index = jnp.array([0, 9], jnp.int32)  # sigma_max and sigma_min
  unscaled = DDPM(**TINY, **levels)
  params = random_params(unscaled, index)
  base = apply(unscaled, params, index)
  scaled = apply(DDPM(**TINY, **levels, scale_by_sigma=True), params, index)
  # One float32 division (separately compiled graphs): relative error ~1e-7.
  expected = base / jnp.array([50.0, 0.01])[:, None, None, None]
  np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-7)


def test_discrete_vp_score_fn_is_minus_output_over_sqrt_one_minus_alpha_bar():
  model = DDPM(**TINY)
  sde = sde_lib.VPSDE()
  t = jnp.array([0.1, 0.8])
  params = random_params(model)
  score_fn = model_utils.get_score_fn(sde, model, continuous=False)
  # DDPM sees the unrounded step t (N - 1).
  score, output = jax.jit(
    lambda p: (score_fn(p, X, t), model.apply({"params": p}, X, t * (sde.N - 1), train=False))
  )(params)
  std = sde.sqrt_1m_alphas_cumprod[(t * (sde.N - 1)).astype(jnp.int32)]
  # One float32 division of the same output: rtol 1e-6.
  np.testing.assert_allclose(score, -output / std[:, None, None, None], rtol=1e-6)


def _config(**model):
  fields = {"name": "ddpm", **TINY, **model}
  del fields["image_size"]
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(fields)
  config.data = ml_collections.ConfigDict({"image_size": 8, "num_channels": 3, "centered": True})
  config.training = ml_collections.ConfigDict({"continuous": False})
  config.sde = ml_collections.ConfigDict(
    {"name": "vpsde", "beta_min": 0.1, "beta_max": 20.0, "N": 1000}
  )
  return config


def test_from_config():
  model = model_utils.get_model(_config(normalization="GroupNorm", nonlinearity="Swish"))
  assert isinstance(model, DDPM)
  assert (model.nf, model.ch_mult, model.centered, model.continuous) == (32, (1, 2), True, False)


@pytest.mark.parametrize(
  "change, fragments",
  [
    ({"nf": 16}, ["config.model.nf", "32"]),
    ({"attn_resolutions": (16,)}, ["config.model.attn_resolutions", "8, 4"]),
    ({"ch_mult": (1, 2, 2, 2, 2)}, ["config.data.image_size", "config.model.ch_mult"]),
    ({"nonlinearity": "tanh"}, ["config.model.nonlinearity", "swish"]),
    ({"normalization": "InstanceNorm"}, ["config.model.normalization", "groupnorm"]),
    ({"scale_by_sigma": True}, ["config.sde.sigma_min"]),
  ],
)
def test_bad_options_name_the_config_field(change, fragments):
  with pytest.raises(ValueError) as error:
    model_utils.get_model(_config(**change))
  for fragment in fragments:
    assert fragment in str(error.value)
