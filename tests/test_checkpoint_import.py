"""Import of released checkpoints (checkpoint_import.py) against the reference networks.

- PyTorch: for each .pth fixture of tests/fixtures/import (score_sde_pytorch networks with random
  weights, written by tools/make_import_fixtures.py; the cases cover Fourier / positional
  embeddings, FIR / plain resampling, BigGAN / DDPM blocks, every progressive and progressive_input
  mode, sum / cat combine, conditional or not, scale_by_sigma with sigma or with level indices;
  a small DDPM U-Net; NCSNv2 and NCSN on discrete VE levels, whose input is the level index),
  `import_checkpoint` writes an orbax checkpoint; restored, our network gives the reference's
  outputs with the raw and with the EMA weights, and `get_score_fn` gives the reference's scores
  for its SDE (VE / VP) and time (continuous / discrete); the step is kept. The port's 128- and
  256-pixel NCSNv2 layouts (recorded from it) map one to one.
- Flax, the original's own checkpoints (tools/make_flax_fixtures.py runs yang-song/score_sde's
  networks and writes flax.serialization.to_bytes of its training State, stored gzip-compressed):
  NCSN++ / DDPM++ option combinations (including the fused FIR up-sampling convolution the port
  cannot run) and DDPM import, from the format detected in the bytes, to the original's outputs
  with the optimizer target and with params_ema (which differ), its scores and its step. The
  original's NCSNv2 / NCSN checkpoints are refused with the reason (other networks than ours).
- Flax, converted layout (slow): the .pth weights written in the original's State layout (Fourier
  W among the params, GroupNorm scale / bias shaped (1, 1, 1, C)) import to the same outputs; old
  (1, 1, 1, C) GroupNorm arrays map to the same values as (C,).
- The format is read from the content: a .pth without suffix and a Flax file named .pth import.
- Bad input: truncated file, another config's checkpoint (error names the tensor and both shapes,
  for both formats and for the RefineNets), another architecture, an unused tensor, a pickle
  calling os.system (refused, named), an EMA list of the wrong length, a params_ema missing a leaf:
  clear error, and the work directory holds no checkpoint afterwards.
- Slow: the full-size ve/cifar10_ncsnpp_continuous and vp/cifar10_ddpmpp_continuous layouts
  (random weights through the inverse mapping) map and run under jax.eval_shape.

Tolerance: the fixture outputs are float32 from PyTorch or XLA; the same float32 network in XLA
sums in another order, giving relative differences about 1e-6 (measured 2e-6 at most), so 1e-5
relative to the output's largest magnitude.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import pickle
import shutil
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import serialization

import checkpoint_import as ci
import checkpoints
import losses
import pth_reader
import sde_lib
from models import utils as mutils

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "import"
# Cases run by default; the others (every fixture is a case) are marked slow to keep the default
# run short, and run in CI's slow job.
DEFAULT_CASES = (
  "ncsnpp_ve_continuous",
  "ddpmpp_vp_continuous",
  "ddpm_vp_discrete",
  "ncsnv2_ve_discrete",
)
CASES = [
  pytest.param(p.stem, marks=() if p.stem in DEFAULT_CASES else pytest.mark.slow)
  for p in sorted(FIXTURES.glob("*.pth"))
]
RTOL = 1e-5  # float32 round-off of two summation orders (see the module docstring)


def _config(ref) -> ml_collections.ConfigDict:
  c = json.loads(str(ref["config"]))
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(c["model"])
  config.sde = ml_collections.ConfigDict(c["sde"])
  config.data = ml_collections.ConfigDict(c["data"])
  config.training = ml_collections.ConfigDict({"continuous": c["continuous"]})
  config.optim = ml_collections.ConfigDict(
    {"optimizer": "Adam", "lr": 2e-4, "beta1": 0.9, "eps": 1e-8, "warmup": 5000, "grad_clip": 1.0}
  )
  return config


def _close(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  err = np.abs(actual - expected).max() / np.abs(expected).max()
  assert err < RTOL, err


def _restore(config, workdir):
  model, variables, _ = ci.target_tree(config)
  abstract = jax.eval_shape(
    lambda p: losses.init_train_state(p, losses.get_optimizer(config.optim)), variables["params"]
  )
  with checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step()
    state = manager.restore(step, abstract)
  return model, state, step, ci.load_constants(workdir)


class _JittedModel:
  """`model` with `apply` compiled once (inference only), so raw, EMA and score share one compile."""

  def __init__(self, model):
    self._apply = jax.jit(lambda variables, x, c: model.apply(variables, x, c, train=False))

  def apply(self, variables, x, c_noise, train=False, rngs=None):
    assert not train
    return self._apply(variables, x, c_noise)


def _check_outputs(config, ref, model, params, ema_params, constants):
  """Raw and EMA outputs at the reference's c_noise, and EMA scores at its t."""
  jitted = _JittedModel(model)
  x, c_noise = jnp.asarray(ref["x"]), jnp.asarray(ref["c_noise"])
  _close(jitted.apply({"params": params, **(constants or {})}, x, c_noise), ref["out_raw"])
  _close(jitted.apply({"params": ema_params, **(constants or {})}, x, c_noise), ref["out_ema"])
  sde = sde_lib.get_sde(config.sde)
  score_fn = mutils.get_score_fn(sde, jitted, bool(config.training.continuous), constants=constants)
  _close(score_fn(ema_params, x, jnp.asarray(ref["t"])), ref["score_ema"])


def _assert_no_checkpoint(workdir):
  directory = os.path.join(workdir, "checkpoints")
  assert not os.path.exists(directory) or not os.listdir(directory)


@pytest.mark.parametrize("case", CASES)
def test_pth_import_matches_reference(case, tmp_path):
  ref = np.load(FIXTURES / f"{case}.npz")
  config = _config(ref)
  workdir = str(tmp_path / "run")
  step = ci.import_checkpoint(config, workdir, str(FIXTURES / f"{case}.pth"))
  assert step == int(ref["step"])
  model, state, restored_step, constants = _restore(config, workdir)
  assert restored_step == step and int(state.step) == step
  assert (constants is not None) == (config.model.get("embedding_type") == "fourier")
  _check_outputs(config, ref, model, state.params, state.ema_params, constants)
  saved = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"))
  assert saved.restore_config(step)["model"]["nf"] == config.model.nf
  saved.close()


def _flax_state_bytes(config, model_vars, ema_vars, step) -> bytes:
  """The original's State layout: Fourier W among the params, GroupNorm as (1, 1, 1, C)."""

  def original(variables):
    tree = jax.tree_util.tree_map_with_path(
      lambda path, v: (
        np.asarray(v).reshape(1, 1, 1, -1)
        if "GroupNorm" in jax.tree_util.keystr(path[-2:-1]) and v.ndim == 1
        else np.asarray(v)
      ),
      variables["params"],
    )
    for module, leaves in variables.get("constants", {}).items():
      tree[module] = {k: np.asarray(v) for k, v in leaves.items()}
    return tree

  target = original(model_vars)
  state = {
    "step": np.int64(step),
    "optimizer": {
      "target": target,
      "state": {"step": np.int64(step), "param_states": jax.tree.map(np.zeros_like, target)},
    },
    "lr": np.float32(2e-4),
    "model_state": {},
    "ema_rate": np.float32(0.999),
    "params_ema": original(ema_vars),
    "rng": np.zeros(2, np.uint32),
  }
  return serialization.msgpack_serialize(state)


@pytest.mark.slow  # the original's own checkpoints (below) cover the Flax path by default
@pytest.mark.parametrize("case", ["ncsnpp_ve_continuous", "ddpmpp_vp_continuous"])
def test_flax_layout_import_matches_reference(case, tmp_path):
  ref = np.load(FIXTURES / f"{case}.npz")
  config = _config(ref)
  model_vars, ema_vars, step = ci.read_checkpoint(config, FIXTURES / f"{case}.pth")
  path = tmp_path / "checkpoint_7.pth"  # a misleading suffix: the content decides
  path.write_bytes(_flax_state_bytes(config, model_vars, ema_vars, 7))
  assert ci.detect_format(path) == "flax"
  workdir = str(tmp_path / "run")
  assert ci.import_checkpoint(config, workdir, str(path)) == 7
  model, state, _, constants = _restore(config, workdir)
  _check_outputs(config, ref, model, state.params, state.ema_params, constants)


def test_format_from_content_not_name(tmp_path):
  path = tmp_path / "checkpoint_24"
  shutil.copy(FIXTURES / "ncsnpp_ve_continuous.pth", path)
  assert ci.detect_format(path) == "pth"
  path.write_bytes(b"not a checkpoint")
  with pytest.raises(ci.CheckpointImportError, match="neither"):
    ci.detect_format(path)


def _ve_case():
  ref = np.load(FIXTURES / "ncsnpp_ve_continuous.npz")
  return ref, _config(ref)


def test_truncated_file(tmp_path):
  _, config = _ve_case()
  data = (FIXTURES / "ncsnpp_ve_continuous.pth").read_bytes()
  path = tmp_path / "truncated.pth"
  path.write_bytes(data[: len(data) // 2])
  workdir = str(tmp_path / "run")
  with pytest.raises(ci.CheckpointImportError, match="Cannot read"):
    ci.import_checkpoint(config, workdir, str(path))
  assert not os.path.exists(workdir)


def test_other_config_names_tensor_and_shapes(tmp_path):
  _, config = _ve_case()
  config.model.nf = 16  # the fixture has nf = 8
  workdir = str(tmp_path / "run")
  with pytest.raises(ci.CheckpointImportError) as info:
    ci.import_checkpoint(config, workdir, str(FIXTURES / "ncsnpp_ve_continuous.pth"))
  message = str(info.value)
  # The first tensor in order is the Fourier W: ours (16,), the file's (8,).
  assert "GaussianFourierProjection_0/W" in message and "(16,)" in message and "(8,)" in message
  assert not os.path.exists(workdir)


def test_other_architecture(tmp_path):
  ref = np.load(FIXTURES / "ddpmpp_vp_continuous.npz")
  config = _config(ref)
  with pytest.raises(ci.CheckpointImportError, match="another architecture or config"):
    ci.import_checkpoint(config, str(tmp_path / "run"), str(FIXTURES / "ncsnpp_ve_continuous.pth"))
  _assert_no_checkpoint(str(tmp_path / "run"))


def test_unsafe_pickle_refused(tmp_path):
  _, config = _ve_case()

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  buffer = io.BytesIO()
  pickle.dump({"model": Evil()}, buffer, protocol=2)
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buffer.getvalue())
  workdir = str(tmp_path / "run")
  with pytest.raises(ci.CheckpointImportError, match="system"):
    ci.import_checkpoint(config, workdir, str(path))
  assert not os.path.exists(workdir)


def test_ema_of_wrong_length(tmp_path):
  _, config = _ve_case()
  ckpt = pth_reader.load_pth(FIXTURES / "ncsnpp_ve_continuous.pth")
  ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
  path = tmp_path / "short_ema.pth"
  pth_reader.save_pth(ckpt, path)
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)  # an existing empty directory stays empty
  with pytest.raises(ci.CheckpointImportError, match="EMA holds"):
    ci.import_checkpoint(config, str(workdir), str(path))
  _assert_no_checkpoint(str(workdir))


def test_refuses_workdir_with_checkpoints(tmp_path):
  _, config = _ve_case()
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "5").mkdir(parents=True)
  with pytest.raises(FileExistsError):
    ci.import_checkpoint(config, str(workdir), str(FIXTURES / "ncsnpp_ve_continuous.pth"))


def _paper_config(name):
  import importlib

  return importlib.import_module(f"configs.{name.replace('/', '.')}").get_config()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ve/cifar10_ncsnpp_continuous", "vp/cifar10_ddpmpp_continuous"])
def test_full_size_layout_imports_and_runs(name):
  config = _paper_config(name)
  ckpt = ci.random_torch_checkpoint(config)
  model_vars, ema_vars = ci.map_pth(config, ckpt["model"], ckpt["ema"]["shadow_params"])
  n = sum(v.size for v in jax.tree.leaves(model_vars["params"]))
  assert (
    n
    == {"ve/cifar10_ncsnpp_continuous": 62_758_787, "vp/cifar10_ddpmpp_continuous": 61_804_419}[
      name
    ]
  )  # the published PyTorch parameter counts (tests/test_ncsnpp.py)
  model = mutils.get_model(config)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  c = jax.ShapeDtypeStruct((2,), jnp.float32)
  out = jax.eval_shape(lambda v, x, c: model.apply(v, x, c, train=False), ema_vars, x, c)
  assert out.shape == (2, 32, 32, 3)


def test_unsupported_pth_architecture_is_named(tmp_path):
  config = _paper_config("toy/checkerboard")
  with pytest.raises(ci.CheckpointImportError, match="'mlp'"):
    ci.import_checkpoint(config, str(tmp_path / "run"), str(FIXTURES / "ncsnpp_ve_continuous.pth"))
  assert not os.path.exists(tmp_path / "run")


def _ncsnv2_case():
  ref = np.load(FIXTURES / "ncsnv2_ve_discrete.npz")
  return ref, _config(ref)


def test_refinenet_pth_of_another_width_names_tensor_and_shapes(tmp_path):
  _, config = _ncsnv2_case()
  config.model.nf = 8  # the fixture has nf = 4
  workdir = str(tmp_path / "run")
  with pytest.raises(ci.CheckpointImportError) as info:
    ci.import_checkpoint(config, workdir, str(FIXTURES / "ncsnv2_ve_discrete.pth"))
  message = str(info.value)
  # The first leaf (in our tree's sorted order) is the first convolution's bias.
  assert "begin_conv/bias" in message and "'begin_conv.bias'" in message
  assert "expects (8,)" in message and "has (4,)" in message
  assert not os.path.exists(workdir)


def test_refinenet_pth_of_another_architecture_names_the_tensor(tmp_path):
  # NCSNv2's file for an NCSN config: NCSN's normalisations are level embeddings, which the
  # NCSNv2 file does not have (the first in our tree's sorted order is the final normaliser's).
  _, config = _ncsnv2_case()
  config.model.name = "ncsn"
  config.model.scale_by_sigma = False
  with pytest.raises(ci.CheckpointImportError, match="another architecture") as info:
    ci.import_checkpoint(config, str(tmp_path / "run"), str(FIXTURES / "ncsnv2_ve_discrete.pth"))
  assert "normalizer/embed/embedding (10, 12)" in str(info.value)
  assert "'normalizer.embed.weight'" in str(info.value)
  assert not os.path.exists(tmp_path / "run")


def test_refinenet_pth_with_an_unused_tensor(tmp_path):
  _, config = _ncsnv2_case()
  ckpt = pth_reader.load_pth(FIXTURES / "ncsnv2_ve_discrete.pth")
  ckpt["model"]["module.refine4.extra.weight"] = np.zeros((2, 2), np.float32)
  path = tmp_path / "extra.pth"
  pth_reader.save_pth(ckpt, path)
  with pytest.raises(ci.CheckpointImportError, match=r"'refine4\.extra\.weight' \(2, 2\)"):
    ci.import_checkpoint(config, str(tmp_path / "run"), str(path))
  assert not os.path.exists(tmp_path / "run")


def test_refinenet_ema_of_wrong_length(tmp_path):
  _, config = _ncsnv2_case()
  ckpt = pth_reader.load_pth(FIXTURES / "ncsnv2_ve_discrete.pth")
  n = len(ckpt["ema"]["shadow_params"])
  ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][1:]
  path = tmp_path / "short_ema.pth"
  pth_reader.save_pth(ckpt, path)
  with pytest.raises(ci.CheckpointImportError, match=f"EMA holds {n - 1} tensors .* has {n} "):
    ci.import_checkpoint(config, str(tmp_path / "run"), str(path))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("name", ["ncsnv2_128", "ncsnv2_256", "ncsnv2"])
def test_deeper_ncsnv2_pth_layouts_map_one_to_one(name):
  # The state_dict layouts (keys, shapes, EMA length) of the port's 128- and 256-pixel NCSNv2 at
  # nf = 2, recorded from score_sde_pytorch by tools/make_import_fixtures.py. The 256-pixel one
  # calls its extra stage res31 / refine31 and numbers the later ones as the 128-pixel one does.
  layouts = json.loads((FIXTURES / "ncsnv2_port_layouts.json").read_text())
  size = 128 if name == "ncsnv2_128" else 256
  layout = layouts[f"ncsnv2_{size}"]
  config = _ncsnv2_case()[1]
  config.model.name, config.model.nf, config.data.image_size = name, 2, size
  rng = np.random.default_rng(0)
  sd = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in layout["model"]}
  sd["module.sigmas"] = ci._sigmas_buffer(config).astype(np.float32)
  ema = [v + 1 for k, v in sd.items() if k != "module.sigmas"]
  assert len(ema) == layout["ema_length"]
  model_vars, ema_vars = ci.map_pth(config, sd, ema)  # raises on any unused or missing tensor
  params = model_vars["params"]
  # The port's refine31 is our third RefineBlock (it fuses our fourth stage, the port's res31).
  expected = sd[f"module.refine{31 if size == 256 else 3}.crp.convs.0.weight"]
  np.testing.assert_array_equal(
    params["refine3"]["crp"]["conv_0"]["kernel"], expected.transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    ema_vars["params"]["end_conv"]["bias"], sd["module.end_conv.bias"] + 1
  )


def test_runs_on_an_imported_workdir_use_its_constants(tmp_path, monkeypatch):
  # Every mode builds its score through run_lib.Experiment(config, workdir); on an imported NCSN++
  # it must use the checkpoint's Fourier weights, not the ones the network would draw itself.
  import datasets
  import run_lib

  case = "ncsnpp_ve_continuous"
  ref = np.load(FIXTURES / f"{case}.npz")
  config = _config(ref)
  workdir = str(tmp_path / "run")
  ci.import_checkpoint(config, workdir, str(FIXTURES / f"{case}.pth"))
  _, state, _, constants = _restore(config, workdir)
  assert constants is not None

  class _Source:
    shape = tuple(ref["x"].shape[1:])

  monkeypatch.setattr(datasets, "get_source", lambda config: _Source())
  config.data.dataset = "CIFAR10"  # the inverse scaler reads it; the score does not
  x, t = jnp.asarray(ref["x"]), jnp.asarray(ref["t"])
  imported = run_lib.Experiment(config, workdir).score_fn(state.ema_params, x, t)
  _close(imported, ref["score_ema"])
  own = run_lib.Experiment(config).score_fn(state.ema_params, x, t)
  assert not np.allclose(np.asarray(own), ref["score_ema"], rtol=1e-3)


# --- Checkpoints written by the original score_sde code (tools/make_flax_fixtures.py) -----------

FLAX_DEFAULT_CASES = ("flax_ncsnpp_ve_continuous", "flax_ncsnpp_ddpmblocks_fir_unconditional")
FLAX_CASES = [
  pytest.param(
    p.name[: -len(".msgpack.gz")],
    marks=() if p.name[: -len(".msgpack.gz")] in FLAX_DEFAULT_CASES else pytest.mark.slow,
  )
  for p in sorted(FIXTURES.glob("flax_*.msgpack.gz"))
  if not p.name.startswith(("flax_ncsnv2", "flax_ncsn_"))
]


def _original_checkpoint(case: str, directory: pathlib.Path) -> pathlib.Path:
  """The original's checkpoint file, as its training loop wrote it (stored gzip-compressed)."""
  ref = np.load(FIXTURES / f"{case}.npz")
  path = directory / f"checkpoint_{int(ref['step'])}"
  path.write_bytes(gzip.decompress((FIXTURES / f"{case}.msgpack.gz").read_bytes()))
  return path


@pytest.mark.parametrize("case", FLAX_CASES)
def test_original_flax_checkpoint_matches_reference(case, tmp_path):
  ref = np.load(FIXTURES / f"{case}.npz")
  config = _config(ref)
  path = _original_checkpoint(case, tmp_path)
  assert ci.detect_format(path) == "flax"
  workdir = str(tmp_path / "run")
  step = ci.import_checkpoint(config, workdir, str(path))
  assert step == int(ref["step"])
  model, state, restored_step, constants = _restore(config, workdir)
  assert restored_step == step and int(state.step) == step
  assert (constants is not None) == (config.model.get("embedding_type") == "fourier")
  # out_raw: the optimizer target; out_ema: params_ema (they differ by ~0.05 per weight).
  assert not np.allclose(ref["out_raw"], ref["out_ema"], rtol=1e-2)
  _check_outputs(config, ref, model, state.params, state.ema_params, constants)


@pytest.mark.parametrize("case", ["flax_ncsnv2_ve_discrete", "flax_ncsn_ve_discrete"])
def test_original_refinenet_checkpoint_is_refused_with_the_reason(case, tmp_path):
  # The original JAX NCSNv2 / NCSN are other networks than the authors' / the port's that this
  # project implements (third RefineBlock width, half-pixel bilinear up-sampling, biased variance
  # of the channel means): refused, naming the difference, and nothing written.
  ref = np.load(FIXTURES / f"{case}.npz")
  config = _config(ref)
  workdir = str(tmp_path / "run")
  with pytest.raises(ci.CheckpointImportError, match="original score_sde JAX code") as info:
    ci.import_checkpoint(config, workdir, str(_original_checkpoint(case, tmp_path)))
  assert "RefineBlock" in str(info.value)
  assert not os.path.exists(workdir)


def test_original_flax_checkpoint_of_another_config_names_tensor_and_shapes(tmp_path):
  case = "flax_ncsnpp_ve_continuous"
  config = _config(np.load(FIXTURES / f"{case}.npz"))
  config.model.nf = 16  # the fixture has nf = 8
  workdir = str(tmp_path / "run")
  with pytest.raises(ci.CheckpointImportError) as info:
    ci.import_checkpoint(config, workdir, str(_original_checkpoint(case, tmp_path)))
  # The first leaf in our tree's sorted order is the first attention block's GroupNorm bias, at
  # the second resolution (2 nf wide): ours (32,), the file's (16,).
  message = str(info.value)
  assert "AttnBlockpp_0/GroupNorm_0/bias" in message and "ours (32,)" in message
  assert "optimizer/target has (16,)" in message
  assert not os.path.exists(workdir)


def test_original_flax_checkpoint_with_an_incomplete_ema(tmp_path):
  case = "flax_ncsnpp_ve_continuous"
  config = _config(np.load(FIXTURES / f"{case}.npz"))
  path = _original_checkpoint(case, tmp_path)
  state = serialization.msgpack_restore(path.read_bytes())
  del state["params_ema"]["Conv_1"]
  path.write_bytes(serialization.msgpack_serialize(state))
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  with pytest.raises(ci.CheckpointImportError, match="Conv_1/(bias|kernel) .* params_ema"):
    ci.import_checkpoint(config, str(workdir), str(path))
  _assert_no_checkpoint(str(workdir))


def test_old_flax_groupnorm_shapes_are_accepted(tmp_path):
  # Checkpoints written with the flax of the paper's time hold GroupNorm scale / bias as
  # (1, 1, 1, C): they map to the same values as (C,).
  case = "flax_ncsnpp_ve_continuous"
  config = _config(np.load(FIXTURES / f"{case}.npz"))
  target = serialization.msgpack_restore(_original_checkpoint(case, tmp_path).read_bytes())[
    "optimizer"
  ]["target"]
  old = jax.tree_util.tree_map_with_path(
    lambda path, v: v.reshape(1, 1, 1, -1) if "GroupNorm" in jax.tree_util.keystr(path) else v,
    target,
  )
  n_reshaped = sum(v.ndim == 4 and v.shape[:3] == (1, 1, 1) for v in jax.tree.leaves(old))
  assert n_reshaped > 10
  expected = ci.map_flax(config, target, "optimizer/target")
  got = ci.map_flax(config, old, "optimizer/target")
  jax.tree.map(np.testing.assert_array_equal, got, expected)
