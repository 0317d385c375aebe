"""NCSNv2 and NCSN networks and their normalisation layers.

Facts checked: InstanceNorm++ equals a direct numpy evaluation of its defining equation; the
conditional layers are the plain ones with parameters looked up by the noise-level index;
bilinear up-sampling with aligned corners gives the exact midpoints; NCSNv2's output at level i is
f(x) / sigma_i (so outputs at two levels have the ratio sigma_j / sigma_i); NCSN depends on the
level only through its embeddings; parameter counts equal the published one (NCSNv2) and a count
from the authors' module list (NCSN, NCSNv2, at full and tiny width); bad configs fail naming the
field. Networks run on tiny shapes (batch 2, 16x16, nf 8).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import sde_lib
from models import ncsn, ncsnv2, normalization
from models import utils as mutils

# float32 round-off of O(1) activations through a few dozen layers: relative 1e-5 is ~100 ulps.
RTOL32 = 1e-5


def tiny_config(name: str = "ncsnv2_64", image_size: int = 16, num_scales: int = 5):
  config = ml_collections.ConfigDict()
  config.sde = ml_collections.ConfigDict(
    {"name": "vesde", "sigma_min": 0.01, "sigma_max": 10.0, "N": num_scales}
  )
  config.training = ml_collections.ConfigDict({"continuous": False})
  config.data = ml_collections.ConfigDict(
    {"image_size": image_size, "num_channels": 3, "centered": False}
  )
  config.model = ml_collections.ConfigDict(
    {
      "name": name,
      "nf": 8,
      "num_scales": num_scales,
      "normalization": "InstanceNorm++",
      "nonlinearity": "elu",
      "interpolation": "bilinear",
      "scale_by_sigma": name != "ncsn",
    }
  )
  return config


def init_key(seed: int = 0) -> jax.Array:
  """A key for initialisation in tests. Initialising op by op compiles one small XLA program per
  random draw; with the "rbg" generator those compile about twice as fast on CPU as threefry's
  (and faster than one compiled init of a whole RefineNet). Values differ, not distributions."""
  return jax.random.key(seed, impl="rbg")


def build(config):
  """(model, sde, params, apply), run op by op.

  On this 2-core CPU, compiling a whole RefineNet takes longer than running a tiny one op by op;
  `test_jit` compiles each network's forward pass once.
  """
  model = mutils.MODELS.get(config.model.name).from_config(config)
  sde = sde_lib.get_sde(config.sde)
  size = config.data.image_size
  shape = (2, size, size, 3)
  params = mutils.init_params(init_key(), model, sde, shape, continuous=False)

  def apply(params, x, labels):
    return model.apply({"params": params}, x, labels, train=False)

  return model, sde, params, apply


@functools.cache
def tiny(name: str):
  """A tiny network (16x16, nf 8, 5 levels) per name, built once for the whole module."""
  return build(tiny_config(name))


def n_params(params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


# --- Normalisation ----------------------------------------------------------------------------


def instance_norm_plus_numpy(x, gamma, alpha, beta):
  """Song & Ermon 2019, Eq. 6, evaluated directly in float64 (authors' variances, eps 1e-5)."""
  x = np.asarray(x, np.float64)
  mu = x.mean(axis=(1, 2))  # [B, C]
  s2 = x.var(axis=(1, 2))
  m = mu.mean(axis=1, keepdims=True)
  v2 = mu.var(axis=1, ddof=1, keepdims=True)
  normalised = (x - mu[:, None, None]) / np.sqrt(s2[:, None, None] + 1e-5)
  return gamma * (normalised + alpha * ((mu - m) / np.sqrt(v2 + 1e-5))[:, None, None]) + beta


def test_instance_norm_plus_matches_its_equation():
  key_x = jax.random.key(1)
  # Channel means spread out (offsets 0..3) so the alpha term matters.
  x = jax.random.normal(key_x, (2, 5, 6, 4)) * 2.0 + jnp.arange(4.0)
  layer = normalization.InstanceNormPlus()
  params = layer.init(init_key(), x)["params"]
  params = jax.tree_util.tree_map(lambda p: p + 0.3 * jnp.arange(p.size).reshape(p.shape), params)
  got = layer.apply({"params": params}, x)
  want = instance_norm_plus_numpy(x, params["gamma"], params["alpha"], params["beta"])
  np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32)


def test_conditional_instance_norm_plus_looks_up_the_level():
  x = jax.random.normal(jax.random.key(2), (3, 4, 4, 6)) + jnp.linspace(-1, 1, 6)
  y = jnp.array([0, 3, 1])
  layer = normalization.ConditionalInstanceNormPlus(num_classes=4)
  params = layer.init(init_key(3), x, y)["params"]
  table = params["embed"]["embedding"] + jax.random.normal(jax.random.key(4), (4, 18))
  got = layer.apply({"params": {"embed": {"embedding": table}}}, x, y)
  gamma, alpha, beta = np.split(np.asarray(table)[np.asarray(y)], 3, axis=-1)
  want = instance_norm_plus_numpy(
    x, gamma[:, None, None], alpha[:, None, None], beta[:, None, None]
  )
  np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32)
  # The released initialisation: scales near 1, biases exactly 0.
  init = np.asarray(params["embed"]["embedding"])
  assert np.all(np.abs(init[:, :12] - 1) < 0.2) and np.all(init[:, 12:] == 0)


@pytest.mark.parametrize("name", ["InstanceNorm", "InstanceNorm++", "VarianceNorm", "GroupNorm"])
def test_normalisations_are_per_example(name):
  """Batch-free: an example's output does not depend on the other examples of the batch."""
  x = jax.random.normal(jax.random.key(5), (2, 4, 4, 8))
  layer = normalization.get_normalization(name)()
  params = layer.init(init_key(6), x)
  both = layer.apply(params, x)
  alone = layer.apply(params, x[:1])
  np.testing.assert_allclose(both[:1], alone, rtol=RTOL32, atol=RTOL32)
  assert "batch_stats" not in params


def test_unknown_normalisation_names_the_field():
  with pytest.raises(ValueError, match="config.model.normalization"):
    normalization.get_normalization("BatchNorm")
  with pytest.raises(ValueError, match="config.model.normalization"):
    normalization.get_normalization("VarianceNorm", conditional=True, num_classes=3)


def test_bilinear_resize_aligns_corners():
  """2x2 -> 3x3 with aligned corners keeps the corners and puts exact averages between them."""
  x = jnp.array([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]
  got = ncsnv2.resize(x, (3, 3), "bilinear")[0, :, :, 0]
  want = np.array([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]])
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  up = ncsnv2.resize(x, (4, 4), "nearest_neighbor")[0, :, :, 0]
  np.testing.assert_array_equal(up, np.repeat(np.repeat(np.asarray(x[0, :, :, 0]), 2, 0), 2, 1))


# --- Networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ncsnv2_64", "ncsnv2_128", "ncsn"])
def test_forward_shape_and_finite(name):
  _, _, params, apply = tiny(name)
  x = jax.random.uniform(jax.random.key(7), (2, 16, 16, 3))
  out = apply(params, x, jnp.array([0, 4]))
  assert out.shape == x.shape
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize(
  "name",
  [
    "ncsnv2_64",
    pytest.param("ncsnv2_128", marks=pytest.mark.slow),
    pytest.param("ncsn", marks=pytest.mark.slow),
  ],
)
def test_jit(name):
  _, _, params, apply = tiny(name)
  x = jax.random.uniform(jax.random.key(11), (2, 16, 16, 3))
  labels = jnp.array([1, 2])
  eager = apply(params, x, labels)
  # XLA may fuse and reorder float32 operations: agreement to round-off of the largest output.
  np.testing.assert_allclose(
    jax.jit(apply)(params, x, labels), eager, rtol=1e-4, atol=1e-5 * float(jnp.abs(eager).max())
  )


def test_ncsnv2_output_is_f_over_sigma():
  """NCSNv2 is unconditional up to the 1 / sigma_i scaling (Song & Ermon 2020, Technique 3)."""
  _, sde, params, apply = tiny("ncsnv2_64")
  x = jnp.broadcast_to(jax.random.uniform(jax.random.key(8), (1, 16, 16, 3)), (2, 16, 16, 3))
  i, j = 0, 3
  out = apply(params, x, jnp.array([i, j]))
  sigmas = np.exp(np.linspace(np.log(10.0), np.log(0.01), 5))
  np.testing.assert_allclose(out[1], out[0] * sigmas[i] / sigmas[j], rtol=RTOL32, atol=0)
  # Level 0 is sigma_max: the VE SDE's discrete index for t = T.
  np.testing.assert_array_equal(sde.c_noise(jnp.array([1.0]), continuous=False), [0])


def test_ncsn_depends_on_the_level_through_its_embeddings_only():
  _, _, params, apply = tiny("ncsn")
  x = jnp.broadcast_to(jax.random.uniform(jax.random.key(9), (1, 16, 16, 3)), (2, 16, 16, 3))
  levels = jnp.array([1, 3])
  out = apply(params, x, levels)
  # Initial embeddings differ by ~2% between levels, so the outputs differ well beyond round-off.
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3 * float(jnp.abs(out).max())

  def copy_row(path, leaf):
    return leaf.at[3].set(leaf[1]) if path[-1].key == "embedding" else leaf

  tied = jax.tree_util.tree_map_with_path(copy_row, params)
  out = apply(tied, x, levels)
  np.testing.assert_allclose(out[0], out[1], rtol=RTOL32, atol=RTOL32 * float(jnp.abs(out).max()))


def test_score_fn_of_a_discrete_ve_model():
  """get_score_fn feeds NCSNv2 the level index of t and returns its output as the score."""
  model, sde, params, apply = tiny("ncsnv2_64")
  score_fn = mutils.get_score_fn(sde, model, continuous=False)
  x = jax.random.uniform(jax.random.key(10), (2, 16, 16, 3))
  t = jnp.array([1.0, 0.0])
  np.testing.assert_array_equal(score_fn(params, x, t), apply(params, x, jnp.array([0, 4])))


def test_continuous_time_input_is_refused():
  model, _, params, _ = tiny("ncsnv2_64")
  x = jnp.zeros((2, 16, 16, 3))
  with pytest.raises(ValueError, match="config.training.continuous = False"):
    jax.eval_shape(lambda p: model.apply({"params": p}, x, jnp.array([0.5, 1.0])), params)


# --- Parameter counts -------------------------------------------------------------------------


def refinenet_count(nf: int, levels: int, channels: int = 3, conditional: bool = True) -> int:
  """Parameters of the authors' 32/64-px RefineNet, counted module by module from their code.

  ermongroup/ncsn CondRefineNetDilated (conditional) and ermongroup/ncsnv2 NCSNv2 (not): begin
  conv; residual stages 1-4; RefineBlocks [2nf] -> 2nf, [2nf, 2nf] -> 2nf, [2nf, 2nf] -> nf,
  [nf, nf] -> nf (end); final norm and conv. A norm has 3 C parameters, times `levels` when it is
  conditional; RefineBlocks have norms only in NCSN.
  """

  def norm(c):
    return 3 * c * (levels if conditional else 1)

  def refine_norm(c):
    return norm(c) if conditional else 0

  def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)

  def residual(c_in, c_out, down, dilation):
    n = norm(c_in)
    if down:
      n += conv(c_in, c_in, 3) + norm(c_in) + conv(c_in, c_out, 3)
      return n + conv(c_in, c_out, 1 if dilation == 1 else 3)
    n += conv(c_in, c_out, 3) + norm(c_out) + conv(c_out, c_out, 3)
    return n + (conv(c_in, c_out, 1 if dilation == 1 else 3) if c_in != c_out else 0)

  def rcu(c, blocks):
    return blocks * 2 * (refine_norm(c) + conv(c, c, 3, bias=False))

  def refine(inputs, c, end=False):
    n = sum(rcu(i, 2) for i in inputs) + rcu(c, 3 if end else 1)
    if len(inputs) > 1:
      n += sum(refine_norm(i) + conv(i, c, 3) for i in inputs)
    return n + 2 * (refine_norm(c) + conv(c, c, 3, bias=False))

  c = nf
  total = conv(channels, c, 3) + norm(c) + conv(c, channels, 3)
  total += residual(c, c, False, 1) + residual(c, c, False, 1)
  total += residual(c, 2 * c, True, 1) + residual(2 * c, 2 * c, False, 1)
  for dilation in (2, 4):
    total += residual(2 * c, 2 * c, True, dilation) + residual(2 * c, 2 * c, False, dilation)
  total += refine([2 * c], 2 * c) + refine([2 * c, 2 * c], 2 * c)
  total += refine([2 * c, 2 * c], c) + refine([c, c], c, end=True)
  return total


def test_refinenet_count_reproduces_the_published_ncsnv2_count():
  # Guards the independent counter itself: the published count of ve/ncsnv2/cifar10 (issue 4).
  assert refinenet_count(128, 1, conditional=False) == 29_694_083


@pytest.mark.parametrize(
  ("name", "nf", "levels"),
  [
    ("ncsnv2_64", 128, 232),
    ("ncsn", 128, 10),
    ("ncsn", 128, 232),
    ("ncsnv2_64", 8, 5),
    ("ncsn", 8, 5),
  ],
)
def test_parameter_counts(name, nf, levels):
  config = tiny_config(name, image_size=32, num_scales=levels)
  config.model.nf = nf
  model = mutils.MODELS.get(name).from_config(config)
  sde = sde_lib.get_sde(config.sde)
  params = jax.eval_shape(
    lambda key: mutils.init_params(key, model, sde, (1, 32, 32, 3), continuous=False),
    jax.random.key(0),
  )
  assert n_params(params) == refinenet_count(nf, levels, conditional=name == "ncsn")


def test_ncsn_cifar10_count():
  """This project's count for ve/ncsn/cifar10 (nf 128, 10 levels), reported in models/ncsn.py."""
  assert refinenet_count(128, 10) == 30_117_635


# --- Bad configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("change", "field"),
  [
    (lambda c: c.data.update(image_size=30), "config.data.image_size"),  # ncsnv2_128 halves twice
    (lambda c: c.sde.update(N=7), "config.sde.N"),
    (lambda c: c.model.update(interpolation="bicubic"), "config.model.interpolation"),
    (lambda c: c.model.update(nonlinearity="gelu"), "config.model.nonlinearity"),
    (lambda c: c.model.update(normalization="BatchNorm"), "config.model.normalization"),
    (lambda c: c.data.update(image_size=512), "config.data.image_size"),  # too large for ncsnv2
  ],
)
def test_bad_config_names_the_field(change, field):
  config = tiny_config("ncsnv2_128")
  change(config)
  if config.data.image_size == 512:
    config.model.name = "ncsnv2"
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    mutils.MODELS.get(config.model.name).from_config(config)


def test_ncsnv2_picks_its_depth_from_the_image_size():
  assert ncsnv2.variant_for_image_size(32) == "64"
  assert ncsnv2.variant_for_image_size(128) == "128"
  assert ncsnv2.variant_for_image_size(256) == "256"
  model = ncsnv2.NCSNv2.from_config(tiny_config("ncsnv2", image_size=128))
  assert model.stages == ncsnv2.VARIANTS["128"][0]
  assert isinstance(ncsn.NCSN.from_config(tiny_config("ncsn")), ncsnv2.RefineNet)
