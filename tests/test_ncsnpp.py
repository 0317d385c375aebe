"""NCSN++ / DDPM++ (models/ncsnpp.py) and their blocks (models/layers.py, models/layerspp.py).

- Parameter counts equal the published PyTorch implementation's (issue 4), for the paper's configs
  loaded through `get_model`, counted with `jax.eval_shape` (no memory, no FLOPs).
- The parameter tree has the reference code's Flax auto-names, so released checkpoints map by name.
- Tiny networks (batch 2, 8x8, nf 16) for every option that changes the graph compile under jit and
  give finite outputs of the input's shape that depend on the noise level; options that are exact
  transformations (scale_by_sigma, centred inputs, dropout off) are checked as identities.
- `get_score_fn` with a VP SDE returns exactly -output / std.
- Bad options fail in `from_config` with the config field and the valid choices.

Most checks use random parameters drawn in numpy over `jax.eval_shape` shapes, with every layer
active (initialisation leaves last layers near zero), and skip the slow-to-compile init.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import sde_lib
from models import layers, layerspp
from models import utils as model_utils
from models.ncsnpp import NCSNpp

# Issue 4's table: trainable parameters of the published PyTorch implementation per config.
PUBLISHED_COUNTS = {
  "ve/cifar10_ncsnpp_continuous": 62_758_787,
  "ve/cifar10_ncsnpp_deep_continuous": 107_586_947,
  "vp/cifar10_ddpmpp_continuous": 61_804_419,
  "vp/cifar10_ddpmpp_deep_continuous": 106_632_579,
  "subvp/cifar10_ddpmpp_continuous": 61_804_419,
  "vp/ddpm/cifar10": 35_218_947,
  "ve/celebahq_256_ncsnpp_continuous": 65_574_421,
}
_SLOW_COUNTS = {"ve/cifar10_ncsnpp_deep_continuous", "vp/cifar10_ddpmpp_deep_continuous"}

TINY = {"nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,), "image_size": 8}
# The smallest network with every block kind (one resolution: bottleneck blocks and attention only).
MINI = {"nf": 8, "ch_mult": (1,), "num_res_blocks": 0, "attn_resolutions": (), "image_size": 8}
X = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
SIGMAS = jnp.array([0.3, 20.0])  # continuous VE conditioning: sigma(t)


def abstract_variables(model, x, c_noise):
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, c_noise, train=False))


def count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def random_params(model, x, c_noise, seed=0, scale=0.2):
  """Random "params" of the model's shapes (numpy draws: no compilation), every layer active."""
  rng = np.random.default_rng(seed)
  shapes = abstract_variables(model, x, c_noise)["params"]
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def flat_names(tree, prefix=""):
  names = []
  for key, value in tree.items():
    if hasattr(value, "items"):
      names += flat_names(value, f"{prefix}{key}/")
    else:
      names.append(f"{prefix}{key}")
  return names


def load_config(name):
  return importlib.import_module("configs." + name.replace("/", ".")).get_config()


# --- Parameter counts and names. ------------------------------------------------------------------


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_COUNTS else n
    for n in sorted(PUBLISHED_COUNTS)
  ],
)
def test_parameter_count_equals_published_implementation(name):
  config = load_config(name)
  model = model_utils.get_model(config)
  sde = sde_lib.get_sde(config.sde)
  size, channels = config.data.image_size, config.data.num_channels
  variables = jax.eval_shape(
    lambda: model_utils.init_variables(
      jax.random.key(0), model, sde, (1, size, size, channels), config.training.continuous
    )
  )
  assert count(variables["params"]) == PUBLISHED_COUNTS[name]
  # Fourier-feature networks also hold nf = 128 fixed random frequencies, outside "params".
  constants = count(variables.get("constants", {}))
  assert constants == (128 if getattr(model, "embedding_type", None) == "fourier" else 0)


def test_parameter_names_follow_the_reference_layout():
  """Flax auto-names in creation order, as in the reference code (checkpoint import maps by name)."""
  model = NCSNpp(**TINY)
  variables = abstract_variables(model, X, SIGMAS)
  params = variables["params"]
  assert flat_names(variables["constants"]) == ["GaussianFourierProjection_0/W"]
  top = set(params)
  # (Trees from eval_shape have sorted keys, so compare names, not order.) Time-embedding MLP,
  # the input conv Conv_0 and, after the last GroupNorm_0, the output conv Conv_1.
  assert {k for k in top if not k.startswith(("ResnetBlock", "AttnBlock"))} == {
    "Dense_0",
    "Dense_1",
    "Conv_0",
    "Conv_1",
    "GroupNorm_0",
    "Downsample_0",
  }
  assert set(flat_names(params["ResnetBlockBigGANpp_0"])) == {
    "GroupNorm_0/scale",
    "GroupNorm_0/bias",
    "Conv_0/kernel",
    "Conv_0/bias",
    "Dense_0/kernel",
    "Dense_0/bias",
    "GroupNorm_1/scale",
    "GroupNorm_1/bias",
    "Conv_1/kernel",
    "Conv_1/bias",
  }
  # The down-sampling block (index 1) changes resolution, so it has the 1x1 shortcut Conv_2.
  assert "Conv_2" in params["ResnetBlockBigGANpp_1"]
  assert set(params["AttnBlockpp_0"]) == {"GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"}
  # The residual input pyramid: a fused FIR conv with the reference's parameter names.
  assert set(flat_names(params["Downsample_0"])) == {"Conv2d_0/weight", "Conv2d_0/bias"}
  assert params["Downsample_0"]["Conv2d_0"]["weight"].shape == (3, 3, 3, 16)
  # Blocks: 1 down + 1 resample-down + 1 down, 2 bottleneck, 2 + 1 resample-up + 2 up = 10.
  assert sorted(k for k in top if k.startswith("ResnetBlock")) == sorted(
    f"ResnetBlockBigGANpp_{i}" for i in range(10)
  )


# --- Layers. ---------------------------------------------------------------------------------------


def test_default_init_is_fan_avg_uniform():
  shape = (3, 3, 64, 32)
  w = layers.default_init(2.0)(jax.random.key(0), shape)
  fan_avg = (9 * 64 + 9 * 32) / 2
  # Uniform on [-a, a] with a^2 / 3 = scale / fan_avg; the sample variance of 18432 draws has
  # relative standard error sqrt(0.8 / 18432) ~ 0.0066, checked at 5 sigma.
  limit = np.sqrt(3 * 2.0 / fan_avg)
  assert float(jnp.max(jnp.abs(w))) <= limit
  np.testing.assert_allclose(float(jnp.var(w)), 2.0 / fan_avg, rtol=0.033)
  tiny = layers.default_init(0.0)(jax.random.key(0), shape)
  assert 0 < float(jnp.max(jnp.abs(tiny))) <= np.sqrt(3e-10 / fan_avg)


def test_timestep_embedding_closed_form():
  t = jnp.array([0.0, 1.0, 250.5])
  emb = layers.get_timestep_embedding(t, 8)
  frequencies = np.exp(-np.log(10_000) * np.arange(4) / 3)  # 1, 10^-4/3, 10^-8/3, 10^-4
  angles = np.asarray(t)[:, None] * frequencies
  # float32 sin/cos of arguments up to 250: absolute error ~ 250 * 6e-8.
  np.testing.assert_allclose(emb, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=3e-5)
  odd = layers.get_timestep_embedding(t, 9)
  assert odd.shape == (3, 9) and np.all(odd[:, -1] == 0)


def test_fourier_weights_are_fixed_constants_outside_params():
  module = layerspp.GaussianFourierProjection(embedding_size=64, scale=16.0)
  x = jnp.log(jnp.array([0.5, 30.0]))
  variables = module.init(jax.random.key(0), x)
  assert "params" not in variables
  w = variables["constants"]["W"]
  # 64 draws of N(0, 16^2): sample std within 4 standard errors (16 / sqrt(128) each) of 16.
  assert abs(float(jnp.std(w)) - 16.0) < 4 * 16.0 / np.sqrt(128)
  emb = module.apply(variables, x)
  angles = np.asarray(x)[:, None] * np.asarray(w)[None] * 2 * np.pi
  np.testing.assert_allclose(emb, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-4)
  # Without the collection, apply re-derives the same W; given other values, it uses them.
  np.testing.assert_array_equal(module.apply({}, x), emb)
  other = module.apply({"constants": {"W": w + 1.0}}, x)
  assert not np.allclose(other, emb)
  # Not trained: no gradient reaches W even when it is passed in.
  grad = jax.grad(lambda c: jnp.sum(module.apply({"constants": c}, x)))({"W": w})
  assert float(jnp.max(jnp.abs(grad["W"]))) == 0.0


@pytest.mark.parametrize("skip_rescale", [False, True])
def test_attention_block_starts_as_identity(skip_rescale):
  """With init_scale 0 the output projection is ~1e-5-small, so AttnBlockpp(x) = x (/ sqrt 2)."""
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
  block = layerspp.AttnBlockpp(skip_rescale=skip_rescale, init_scale=0.0)
  y = jax.jit(lambda k: block.apply(block.init(k, x), x))(jax.random.key(2))
  expected = x / np.sqrt(2.0) if skip_rescale else x
  # |NIN_3 weights| <= sqrt(3e-10 / 16) ~ 4e-6, times 16 channels of O(3) values: < 5e-4.
  np.testing.assert_allclose(y, expected, atol=5e-4)


def test_attention_weights_are_a_softmax_over_positions():
  q = jnp.zeros((1, 2, 2, 4))
  v = jax.random.normal(jax.random.key(3), (1, 2, 2, 4))
  # Equal logits: every position attends uniformly, output = mean of v over positions.
  out = layers.spatial_attention(q, q, q, v)
  np.testing.assert_allclose(
    out, jnp.broadcast_to(v.mean(axis=(1, 2), keepdims=True), v.shape), atol=1e-6
  )


@pytest.mark.parametrize("method, channels", [("cat", 32), ("sum", 16)])
def test_combine(method, channels):
  x, y = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 4, 4, 16))
  module = layerspp.Combine(method=method)
  variables = module.init(jax.random.key(0), x, y)
  assert variables["params"]["Conv_0"]["kernel"].shape == (1, 1, 3, 16)
  assert module.apply(variables, x, y).shape == (2, 4, 4, channels)


# --- Forward passes of tiny networks. --------------------------------------------------------------

# Every option that changes the graph, each at least once: block type x FIR x output pyramid x
# input pyramid x combine x embedding x conditional x resampling convs x skip rescale.
OPTION_SETS = [
  {},
  {"progressive": "output_skip", "progressive_input": "input_skip"},
  {"progressive": "residual", "progressive_input": "residual", "progressive_combine": "cat"},
  {
    "progressive": "output_skip",
    "progressive_input": "input_skip",
    "progressive_combine": "cat",
    "fir": False,
  },
  {"resblock_type": "ddpm", "progressive": "residual", "progressive_input": "input_skip"},
  {
    "resblock_type": "ddpm",
    "fir": False,
    "progressive_input": "residual",
    "resamp_with_conv": False,
  },
  {
    "fir": False,
    "progressive_input": "none",
    "embedding_type": "positional",
    "scale_by_sigma": False,
  },
  {
    "conditional": False,
    "scale_by_sigma": False,
    "skip_rescale": False,
    "progressive_input": "input_skip",
    "nonlinearity": "elu",
  },
  {"fir_kernel": (1, 2, 1), "resamp_with_conv": False, "progressive": "residual"},
]


@pytest.mark.parametrize(
  "options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "ncsnpp"
)
def test_tiny_network_compiles_and_depends_on_noise_level(options):
  model = NCSNpp(**{**TINY, **options})
  c_noise = SIGMAS if model.embedding_type == "fourier" else jnp.array([3.0, 700.0])
  params = random_params(model, X, c_noise)
  apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, c, train=False))
  y = apply(params, X, c_noise)
  assert y.shape == X.shape and y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))
  # Swapping the two noise levels changes both outputs, unless the network is unconditional
  # (and not scaled by sigma): then it ignores c_noise entirely.
  y_swapped = apply(params, X, c_noise[::-1])
  if model.conditional or model.scale_by_sigma:
    assert float(jnp.min(jnp.abs(y_swapped - y).max(axis=(1, 2, 3)))) > 1e-3
  else:
    np.testing.assert_array_equal(y_swapped, y)


def _apply(model, params, x, c_noise, train=False, key=None):
  rngs = {"dropout": key} if key is not None else {}
  return jax.jit(lambda p: model.apply({"params": p}, x, c_noise, train=train, rngs=rngs))(params)


def test_scale_by_sigma_divides_by_sigma():
  """Fourier (continuous VE): by c_noise = sigma; positional (discrete VE): by sigma_index."""
  unscaled = NCSNpp(**MINI, scale_by_sigma=False)
  params = random_params(unscaled, X, SIGMAS)
  base = _apply(unscaled, params, X, SIGMAS)
  scaled = _apply(NCSNpp(**MINI), params, X, SIGMAS)
  # float32: one division, relative error ~1e-7 (XLA may fuse it differently: allow 1e-6).
  np.testing.assert_allclose(scaled, base / SIGMAS[:, None, None, None], rtol=1e-6, atol=1e-7)

  discrete = {
    "embedding_type": "positional",
    "continuous": False,
    "sigma_min": 0.01,
    "sigma_max": 50.0,
    "num_scales": 10,
  }
  index = jnp.array([0, 9], jnp.int32)  # sigma_max and sigma_min
  unscaled = NCSNpp(**MINI, **discrete, scale_by_sigma=False)
  params = random_params(unscaled, X, index)
  base = _apply(unscaled, params, X, index)
  scaled = _apply(NCSNpp(**MINI, **discrete), params, X, index)
  expected = base / jnp.array([50.0, 0.01])[:, None, None, None]
  np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-7)


def test_uncentred_inputs_are_mapped_to_minus_one_one():
  model = NCSNpp(**MINI, centered=False)
  params = random_params(model, X, SIGMAS)
  y = _apply(model, params, X, SIGMAS)
  y_centered = _apply(NCSNpp(**MINI, centered=True), params, 2 * X - 1, SIGMAS)
  # The same float32 network on inputs that differ by the rounding of 2x - 1 (~1e-7): outputs of
  # size ~1 agree to ~1e-6.
  np.testing.assert_allclose(y, y_centered, rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
  model = NCSNpp(**MINI, dropout=0.5)
  params = random_params(model, X, SIGMAS)
  apply = jax.jit(
    lambda key, train: model.apply(
      {"params": params}, X, SIGMAS, train=train, rngs={"dropout": key}
    ),
    static_argnums=1,
  )
  evaluation = apply(jax.random.key(0), False)
  np.testing.assert_array_equal(evaluation, apply(jax.random.key(1), False))
  # No dropout in evaluation: the same as a network without dropout, trained or not (two separately
  # compiled float32 graphs: round-off ~1e-6 on outputs of size ~1).
  no_dropout = NCSNpp(**MINI, dropout=0.0)
  trained = _apply(no_dropout, params, X, SIGMAS, train=True)
  np.testing.assert_allclose(evaluation, trained, rtol=1e-5, atol=1e-5)
  train_a, train_b = apply(jax.random.key(0), True), apply(jax.random.key(1), True)
  assert not np.allclose(train_a, evaluation) and not np.allclose(train_a, train_b)


# --- Initialisation and the score function. -------------------------------------------------------


def test_init_variables_and_score_fn_with_constants():
  model = NCSNpp(**MINI)
  sde = sde_lib.VESDE()
  shape = (2, 8, 8, 3)
  # (Optimisation level 0 only to compile this one-off initialisation faster: 3 s instead of 12.)
  init = jax.jit(
    lambda k: model_utils.init_variables(k, model, sde, shape),
    compiler_options={"xla_backend_optimization_level": 0},
  )
  variables = init(jax.random.key(0))
  assert set(variables) == {"params", "constants"}
  params_shapes = jax.eval_shape(
    lambda: model_utils.init_params(jax.random.key(0), model, sde, shape)
  )
  assert flat_names(params_shapes) == flat_names(variables["params"])
  # Random parameters, so that the noise embedding visibly reaches the output.
  t = jnp.array([0.2, 0.9])
  params = random_params(model, X, sde.sigma(t))

  derived = jax.jit(lambda p: model_utils.get_score_fn(sde, model)(p, X, t))(params)

  @jax.jit
  def score_and_output(p, constants):
    score = model_utils.get_score_fn(sde, model, constants=constants)(p, X, t)
    output = model.apply({"params": p, **constants}, X, sde.sigma(t), train=False)
    return score, output

  stored, output = score_and_output(params, {"constants": variables["constants"]})
  # VE: the network output (divided by sigma(t)) is the score itself.
  np.testing.assert_array_equal(stored, output)
  # Constants derived by the network equal the stored ones (separate compilations: round-off).
  np.testing.assert_allclose(derived, stored, rtol=1e-6, atol=1e-7)
  # Other constants change the score.
  shifted = jax.tree.map(lambda w: w + 1.0, variables["constants"])
  assert not np.allclose(score_and_output(params, {"constants": shifted})[0], stored)


def test_vp_score_fn_is_minus_output_over_std():
  options = {"embedding_type": "positional", "scale_by_sigma": False, "centered": True}
  model = NCSNpp(**MINI, **options)
  sde = sde_lib.VPSDE()
  t = jnp.array([0.1, 0.8])
  params = random_params(model, X, t)

  def score(network, continuous):
    score_fn = model_utils.get_score_fn(sde, network, continuous=continuous)
    return jax.jit(lambda p: score_fn(p, X, t))(params)

  # The score is one float32 division of the same output (separately compiled): rtol 1e-6.
  # Continuous: the network sees 999 t and its output is divided by the marginal std.
  output = _apply(model, params, X, 999.0 * t)
  std = sde.marginal_prob(X, t)[1]
  np.testing.assert_allclose(score(model, True), -output / std[:, None, None, None], rtol=1e-6)
  # Discrete (DDPM): it sees t (N - 1) and the output is divided by sqrt(1 - alpha_bar_i).
  discrete = NCSNpp(**MINI, **options, continuous=False)
  output = _apply(discrete, params, X, t * 999)
  std = sde.sqrt_1m_alphas_cumprod[(t * 999).astype(jnp.int32)]
  np.testing.assert_allclose(score(discrete, False), -output / std[:, None, None, None], rtol=1e-6)


# --- Bad options fail in from_config, naming the field. --------------------------------------------


def _config(**model):
  config = ml_collections.ConfigDict()
  fields = {"name": "ncsnpp", **TINY, **model}
  del fields["image_size"]
  config.model = ml_collections.ConfigDict(fields)
  config.data = ml_collections.ConfigDict({"image_size": 8, "num_channels": 3, "centered": False})
  config.training = ml_collections.ConfigDict({"continuous": True})
  config.sde = ml_collections.ConfigDict(
    {"name": "vesde", "sigma_min": 0.01, "sigma_max": 50.0, "N": 1000}
  )
  return config


def test_from_config_reads_every_section():
  config = _config(progressive="Output_Skip", fir_kernel=[1, 2, 1])
  config.training.continuous = False
  config.model.embedding_type = "positional"
  config.sde.N = 7
  model = model_utils.get_model(config)
  assert isinstance(model, NCSNpp)
  assert (model.progressive, model.fir_kernel, model.num_scales, model.continuous) == (
    "output_skip",
    (1, 2, 1),
    7,
    False,
  )
  assert (model.image_size, model.centered, model.ch_mult) == (8, False, (1, 2))


@pytest.mark.parametrize(
  "change, fragments",
  [
    ({"progressive": "pyramid"}, ["config.model.progressive", "output_skip", "residual"]),
    ({"progressive_input": "skip"}, ["config.model.progressive_input", "input_skip"]),
    ({"progressive_combine": "mean"}, ["config.model.progressive_combine", "sum", "cat"]),
    ({"resblock_type": "vgg"}, ["config.model.resblock_type", "biggan", "ddpm"]),
    ({"embedding_type": "learned"}, ["config.model.embedding_type", "fourier", "positional"]),
    ({"nonlinearity": "gelu"}, ["config.model.nonlinearity", "swish"]),
    ({"attention_type": "linear"}, ["config.model.attention_type", "ddpm"]),
    ({"conv_size": 5}, ["config.model.conv_size", "3"]),
    ({"attn_resolutions": (5,)}, ["config.model.attn_resolutions", "8, 4"]),
    ({"ch_mult": (1, 2, 2, 2, 2)}, ["config.data.image_size", "config.model.ch_mult"]),
    ({"nf": 18}, ["config.model.nf"]),
  ],
)
def test_bad_options_name_the_config_field(change, fragments):
  with pytest.raises(ValueError) as error:
    model_utils.get_model(_config(**change))
  for fragment in fragments:
    assert fragment in str(error.value)


def test_inconsistent_time_options_are_rejected():
  config = _config()  # Fourier features of log sigma need continuous time.
  config.training.continuous = False
  with pytest.raises(ValueError, match="config.training.continuous"):
    model_utils.get_model(config)
  config = _config(embedding_type="positional")  # positional + scale_by_sigma expects a level index
  with pytest.raises(ValueError, match="config.training.continuous = False"):
    model_utils.get_model(config)
  config = _config(embedding_type="positional")
  config.training.continuous = False
  del config.sde["sigma_min"]
  with pytest.raises(ValueError, match="config.sde.sigma_min"):
    model_utils.get_model(config)


def test_input_of_the_wrong_size_is_rejected():
  model = NCSNpp(**TINY)
  with pytest.raises(ValueError, match="config.data.image_size"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)), SIGMAS))


# --- Identity with the reference implementation, when a local copy of it is present. -------------

ORIGINAL_REPO = pathlib.Path(
  os.environ.get("SCORE_SDE_REPO", "/work/.mirror/yang-song+score_sde/repo")
)
_REFERENCE_FILES = ("ncsnpp", "ddpm", "layers", "layerspp", "normalization", "up_or_down_sampling")
# The reference's models/utils.py pulls in its training state and sde_lib; its networks only need
# these two functions from it.
_REFERENCE_UTILS_STUB = """
import jax.numpy as jnp
def register_model(cls=None, *, name=None):
  return (lambda c: c) if cls is None else cls
def get_sigmas(config):
  return jnp.exp(jnp.linspace(jnp.log(config.model.sigma_max), jnp.log(config.model.sigma_min),
                              config.model.num_scales))
"""


@pytest.fixture(scope="module")
def reference_models(tmp_path_factory):
  """The reference code's models package, read from the local repository copy at test time."""
  package = tmp_path_factory.mktemp("reference") / "reference_models"
  package.mkdir()
  for name in _REFERENCE_FILES:
    source = subprocess.run(
      ["git", "-C", str(ORIGINAL_REPO), "show", f"HEAD:models/{name}.py"],
      check=True,
      capture_output=True,
      text=True,
    ).stdout
    (package / f"{name}.py").write_text(source)
  (package / "__init__.py").write_text("")
  (package / "utils.py").write_text(_REFERENCE_UTILS_STUB)
  sys.path.insert(0, str(package.parent))
  try:
    yield {n: importlib.import_module(f"reference_models.{n}") for n in ("ncsnpp", "ddpm")}
  finally:
    sys.path.remove(str(package.parent))


def _reference_config(model_name, options, continuous=True):
  """A tiny config in both layouts (the reference reads SDE fields from config.model)."""
  published = {  # NCSN++ (cont.) on CIFAR-10; the reference reads every field from the config
    "dropout": 0.1,
    "resamp_with_conv": True,
    "conditional": True,
    "fir": True,
    "fir_kernel": [1, 3, 3, 1],
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "residual",
    "progressive_combine": "sum",
    "attention_type": "ddpm",
    "embedding_type": "fourier",
    "init_scale": 0.0,
    "fourier_scale": 16,
    "conv_size": 3,
    "scale_by_sigma": True,
    "nonlinearity": "swish",
    "normalization": "GroupNorm",
    "sigma_min": 0.01,
    "sigma_max": 50.0,
    "num_scales": 1000,
  }
  config = _config(name=model_name, **{**published, **options})
  config.data.image_size = 16
  config.training.continuous = continuous
  return config


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL_REPO.exists(), reason="no local copy of yang-song/score_sde")
@pytest.mark.parametrize(
  "model_name, options, continuous, c_noise",
  [
    ("ncsnpp", {}, True, [0.5, 20.0]),
    (
      "ncsnpp",
      {"progressive": "output_skip", "progressive_input": "input_skip"},
      True,
      [0.5, 20.0],
    ),
    (
      "ncsnpp",
      {"progressive": "residual", "progressive_combine": "cat", "fir": False},
      True,
      [0.5, 20.0],
    ),
    (
      "ncsnpp",
      {"resblock_type": "ddpm", "progressive": "residual", "progressive_input": "input_skip"},
      True,
      [0.5, 20.0],
    ),
    ("ncsnpp", {"embedding_type": "positional"}, False, [3, 700]),
    (
      "ncsnpp",
      {
        "fir": False,
        "progressive_input": "none",
        "embedding_type": "positional",
        "scale_by_sigma": False,
      },
      True,
      [3.5, 700.2],
    ),
    ("ddpm", {"nf": 32, "scale_by_sigma": False}, False, [3.5, 700.2]),
  ],
)
def test_same_names_and_outputs_as_the_reference(
  reference_models, model_name, options, continuous, c_noise
):
  """Same parameter names and shapes as the reference network; given the same (random)
  parameters, the same outputs up to float32 round-off."""
  config = _reference_config(
    model_name, {"attn_resolutions": (8,), "ch_mult": (1, 2, 2), **options}, continuous
  )
  ours = model_utils.get_model(config)
  reference = getattr(reference_models[model_name], "NCSNpp" if model_name == "ncsnpp" else "DDPM")(
    config=config
  )
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  c_noise = jnp.asarray(c_noise)
  reference_params = jax.eval_shape(
    lambda: reference.init({"params": jax.random.key(0)}, x, c_noise, train=False)["params"]
  )
  our_variables = jax.eval_shape(
    lambda: ours.init({"params": jax.random.key(0)}, x, c_noise, train=False)
  )

  def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
      out.update(
        flat(value, f"{prefix}{key}/") if hasattr(value, "items") else {prefix + key: value}
      )
    return out

  reference_flat = flat(reference_params)
  fourier = {k: v for k, v in reference_flat.items() if "GaussianFourierProjection" in k}
  assert set(reference_flat) - set(fourier) == set(flat(our_variables["params"]))
  assert all(reference_flat[k].shape == v.shape for k, v in flat(our_variables["params"]).items())
  # Randomise every parameter (zero-initialised last layers would hide differences) and copy them.
  rng = np.random.default_rng(0)
  randomised = {
    k: jnp.asarray(0.2 * rng.standard_normal(v.shape), v.dtype) for k, v in reference_flat.items()
  }

  def nest(tree, prefix=""):
    return {
      k: nest(v, f"{prefix}{k}/") if hasattr(v, "items") else randomised[prefix + k]
      for k, v in tree.items()
    }

  variables = {"params": nest(our_variables["params"])}
  if fourier:
    variables["constants"] = {
      "GaussianFourierProjection_0": {"W": randomised["GaussianFourierProjection_0/W"]}
    }
  expected = jax.jit(lambda p: reference.apply({"params": p}, x, c_noise, train=False))(
    nest(reference_params)
  )
  got = jax.jit(lambda v: ours.apply(v, x, c_noise, train=False))(variables)
  # float32 networks of ~40 layers with O(1) activations: summation order differs, ~1e-6 relative.
  np.testing.assert_allclose(
    got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected)))
  )
