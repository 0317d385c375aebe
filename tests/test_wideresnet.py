"""The noise-conditional Wide-ResNet classifier.

Facts checked: logits of shape [B, num_classes], finite, under jit; they depend on the noise level;
the random Fourier frequencies get no gradient; the per-image standardisation makes the logits
invariant to x -> a x + b (a > 0); the paper's WRN-28-10 has the reference network's parameter
count; and, when a copy of the score-SDE reference code is present, its network given the same
weights computes the same logits. Bad configs fail naming the field.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from models import utils as mutils
from models.wideresnet_noise_conditional import WideResnetNoiseConditional

ORIGINAL_REPO = pathlib.Path(
  os.environ.get("SCORE_SDE_REPO", "/work/.mirror/yang-song+score_sde/repo")
)

# Small: 2 blocks per group, width 2, 8x8 images; float32 logits of size O(1).
SMALL = {"blocks_per_group": 2, "channel_multiplier": 2, "num_classes": 5, "image_size": 8}
RTOL32 = 1e-5  # float32 round-off through ~20 layers


@functools.cache
def small():
  model = WideResnetNoiseConditional(**SMALL)
  x = jnp.zeros((2, 8, 8, 3))
  # A jitted init with the "rbg" generator compiles far faster on CPU than threefry op by op.
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, jnp.ones((2,)))
  return model, variables["params"], variables["constants"]


def images(key, n=2):
  return jax.random.uniform(key, (n, 8, 8, 3))


def test_logits_shape_finite_and_jit():
  model, params, _ = small()
  x, sigma = images(jax.random.key(1)), jnp.array([0.01, 50.0])
  logits = model.apply({"params": params}, x, sigma)
  assert logits.shape == (2, 5)
  assert np.all(np.isfinite(logits))
  jitted = jax.jit(lambda p, x, s: model.apply({"params": p}, x, s))(params, x, sigma)
  np.testing.assert_allclose(jitted, logits, rtol=1e-4, atol=1e-4 * float(jnp.abs(logits).max()))


def test_logits_depend_on_the_noise_level():
  model, params, _ = small()
  x = jnp.broadcast_to(images(jax.random.key(2), 1), (2, 8, 8, 3))
  logits = model.apply({"params": params}, x, jnp.array([0.01, 50.0]))
  # Same image, two noise levels: the embedding of log sigma moves every block's activations.
  assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-3 * float(jnp.abs(logits).max())


def test_fourier_frequencies_are_constants():
  """The frequencies are not parameters, get no gradient, and params alone reproduce them."""
  model, params, constants = small()
  assert "fourier_embedding" not in params
  assert constants["fourier_embedding"]["W"].shape == (SMALL.get("embedding_size", 128),)
  x, sigma = images(jax.random.key(3)), jnp.array([0.1, 1.0])
  with_constants = model.apply({"params": params, "constants": constants}, x, sigma)
  np.testing.assert_array_equal(model.apply({"params": params}, x, sigma), with_constants)
  grads = jax.grad(lambda c: model.apply({"params": params, "constants": c}, x, sigma).sum())(
    constants
  )
  assert np.all(grads["fourier_embedding"]["W"] == 0)


def test_per_image_standardisation_invariance():
  """Logits depend on x only through (x - mean(x)) / std(x) (std above its floor)."""
  model, params, _ = small()
  x, sigma = images(jax.random.key(4)), jnp.array([0.5, 2.0])
  logits = model.apply({"params": params}, x, sigma)
  shifted = model.apply({"params": params}, 3.0 * x - 7.0, sigma)
  np.testing.assert_allclose(shifted, logits, rtol=1e-4, atol=1e-4 * float(jnp.abs(logits).max()))


def test_wrn_28_10_parameter_count():
  """The paper's classifier: WRN-28-10 for CIFAR-10. The reference network (score_sde's
  create_classifier, counted with jax.eval_shape) holds 38,913,242 parameters, 128 of them the
  fixed Fourier frequencies, which here are constants."""
  config = ml_collections.ConfigDict(
    {
      "model": {"name": "wideresnet_noise_conditional"},
      "data": {"image_size": 32, "num_channels": 3},
    }
  )
  model = mutils.MODELS.get(config.model.name).from_config(config)
  variables = jax.eval_shape(
    lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), jnp.ones((1,))), jax.random.key(0)
  )
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))
  assert count == 38_913_242 - 128
  assert variables["constants"]["fourier_embedding"]["W"].shape == (128,)


@pytest.mark.parametrize(
  ("fields", "field"),
  [
    ({"image_size": 30}, "config.data.image_size"),
    ({"num_classes": 0}, "config.model.num_classes"),
    ({"blocks_per_group": 0}, "config.model.blocks_per_group"),
  ],
)
def test_bad_config_names_the_field(fields, field):
  config = ml_collections.ConfigDict(
    {"model": {"name": "wideresnet_noise_conditional"}, "data": {"image_size": 32}}
  )
  for name, value in fields.items():
    section = config.data if name == "image_size" else config.model
    section[name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    WideResnetNoiseConditional.from_config(config)


def test_wrong_input_shape_is_refused():
  model, params, _ = small()
  with pytest.raises(ValueError, match="config.data.image_size"):
    model.apply({"params": params}, jnp.zeros((2, 16, 16, 3)), jnp.ones((2,)))


# --- The reference network --------------------------------------------------------------------


def _reference_module(monkeypatch):
  """score_sde's models/wideresnet_noise_conditional.py, executed as a module (read-only use)."""
  source = subprocess.run(
    ["git", "-C", str(ORIGINAL_REPO), "show", "HEAD:models/wideresnet_noise_conditional.py"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  module = types.ModuleType("reference_wideresnet")
  monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look the module up
  exec(compile(source, "reference_wideresnet", "exec"), module.__dict__)
  return module


def _to_reference_names(params, constants, blocks_per_group):
  """Our parameter tree renamed to the reference's flax auto-names."""
  block_names = {
    "norm_in": "init_bn",
    "conv1": "conv1",
    "emb_proj": "Dense_0",
    "norm_mid": "bn_2",
    "conv2": "conv2",
  }
  tree = {
    "GaussianFourierProjection_0": constants["fourier_embedding"],
    "Dense_0": params["emb_dense0"],
    "Dense_1": params["emb_dense1"],
    "Dense_2": params["logits"],
    "init_conv": params["init_conv"],
    "pre-pool-bn": params["norm_out"],
  }
  for g in range(3):
    tree[f"WideResnetGroup_{g}"] = {
      f"WideResnetBlock_{b}": {block_names[k]: v for k, v in params[f"group{g}_block{b}"].items()}
      for b in range(blocks_per_group)
    }
  return tree


@pytest.mark.skipif(not ORIGINAL_REPO.exists(), reason="no local copy of yang-song/score_sde")
def test_same_logits_as_the_reference_network(monkeypatch):
  model, params, constants = small()
  reference = _reference_module(monkeypatch).WideResnet(
    blocks_per_group=SMALL["blocks_per_group"],
    channel_multiplier=SMALL["channel_multiplier"],
    num_outputs=SMALL["num_classes"],
  )
  x, sigma = images(jax.random.key(5)), jnp.array([0.03, 7.0])
  ref_params = _to_reference_names(params, constants, SMALL["blocks_per_group"])
  # The renamed tree must be exactly the reference's own tree (same names and shapes).
  ref_shapes = jax.eval_shape(
    lambda key: reference.init(key, x, sigma, train=False)["params"], jax.random.key(0)
  )
  assert jax.tree_util.tree_structure(ref_shapes) == jax.tree_util.tree_structure(ref_params)
  got = model.apply({"params": params}, x, sigma)
  want = reference.apply({"params": ref_params}, x, sigma, train=False)
  np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32 * float(jnp.abs(want).max()))
