"""models/layers.GroupNorm against flax.linen.GroupNorm: same maths, same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 32), 8), ((3, 4, 4, 12), 3), ((2, 5, 12), 4)])
def test_group_norm_matches_flax(shape, groups):
  kx, ks, kb, kg = jax.random.split(jax.random.key(0), 4)
  x = 2.0 * jax.random.normal(kx, shape) + 0.5  # off-centre, so the mean term matters
  channels = shape[-1]
  params = {
    "params": {
      "scale": 1.0 + 0.3 * jax.random.normal(ks, (channels,)),
      "bias": 0.2 * jax.random.normal(kb, (channels,)),
    }
  }
  ours, theirs = layers.GroupNorm(groups), nn.GroupNorm(num_groups=groups, epsilon=1e-6)
  # Same parameter tree and initial values.
  init_ours = ours.init(jax.random.key(1), x)
  init_theirs = theirs.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, init_ours) == jax.tree.map(jnp.shape, init_theirs)
  np.testing.assert_array_equal(init_ours["params"]["scale"], init_theirs["params"]["scale"])
  np.testing.assert_array_equal(init_ours["params"]["bias"], init_theirs["params"]["bias"])
  # Outputs are O(1): float32 sums over <= 2,048 terms in a different order differ by ~1e-6.
  y_ours, y_theirs = ours.apply(params, x), theirs.apply(params, x)
  np.testing.assert_allclose(y_ours, y_theirs, atol=2e-5, rtol=0)
  # Normalised per example and group: zero mean, unit variance before scale/bias.
  unit = {"params": {"scale": jnp.ones(channels), "bias": jnp.zeros(channels)}}
  z = np.asarray(ours.apply(unit, x)).reshape(shape[0], -1, groups, channels // groups)
  np.testing.assert_allclose(z.mean(axis=(1, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.var(axis=(1, 3)), 1.0, atol=1e-4)  # epsilon 1e-6 / var ~ 4

  # Gradients with respect to the input and both parameters.
  g = jax.random.normal(kg, shape)

  def loss(module, p, x):
    return jnp.sum(jnp.tanh(module.apply(p, x)) * g)

  d_ours = jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1))(params, x)
  d_theirs = jax.grad(lambda p, x: loss(theirs, p, x), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(d_ours), jax.tree.leaves(d_theirs), strict=True):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(a, b, atol=5e-5 * scale, rtol=0)


def test_group_norm_groups_must_divide_channels():
  with pytest.raises(ValueError, match="3 groups do not divide 8 channels"):
    layers.GroupNorm(3).init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))
