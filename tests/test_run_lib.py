"""The training pipeline end to end: main.py -> run_lib.train on 8 virtual CPU devices.

One short toy run (checkerboard, small MLP, VP SDE, 80 steps of batch 64) through the command line
with `--config.x.y=value` overrides, then checks of everything it leaves in its work directory:
the loss falls, checkpoints restore to the state the run finished with, samples are finite and
written as PNG and npz, TensorBoard holds the scalars. Config errors must come before anything is
compiled. The digits default (the README's main command) is smoke-tested in the slow set.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

import checkpoints
import run_lib
from configs.digits import digits_ncsnpp_continuous
from configs.toy import checkerboard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A toy run small enough for the default test set: 80 steps, checkpoints every 20, samples and
# evaluation every 40, scalars every 5 steps.
TOY_OVERRIDES = {
  "training.batch_size": 64,
  "training.n_iters": 80,
  "training.snapshot_freq": 40,
  "training.snapshot_freq_for_preemption": 20,
  "training.log_freq": 5,
  "training.eval_freq": 40,
  "sampling.batch_size": 64,
  "eval.batch_size": 64,
  "sde.N": 50,
  "model.hidden": 64,
  "model.num_layers": 2,
  "model.embedding_dim": 32,
  "optim.warmup": 10,
  # An EMA that follows 80 steps: at 0.999 the snapshot would sample from nearly the initial
  # network, whose score sends Euler-Maruyama samples to |x| ~ 100.
  "model.ema_rate": 0.9,
}


def override(config: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
  for name, value in changes.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


def toy_config(**changes) -> ml_collections.ConfigDict:
  """The test's toy config; `changes` maps "section__field" to a value."""
  config = override(checkerboard.get_config(), TOY_OVERRIDES)
  return override(config, {k.replace("__", "."): v for k, v in changes.items()})


def run_main(args: list[str], env: dict | None = None, timeout: float = 600):
  """Runs main.py in a subprocess from the repository root; returns the completed process."""
  return subprocess.run(
    [sys.executable, "main.py", *args],
    cwd=ROOT,
    env=env if env is not None else os.environ.copy(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def fingerprint_logged(stderr: str) -> tuple[int, str]:
  """The (step, state fingerprint) that run_lib.train logs when it finishes."""
  match = re.search(r"Finished at step (\d+); state fingerprint ([0-9a-f]+)", stderr)
  assert match, stderr[-3000:]
  return int(match.group(1)), match.group(2)


def read_scalars(logdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from the TensorBoard event files in logdir (TFRecord framing: u64
  length, u32 crc, payload, u32 crc)."""
  from tensorboardX.proto import event_pb2

  scalars: dict[str, dict[int, float]] = {}
  for name in os.listdir(logdir):
    with open(os.path.join(logdir, name), "rb") as f:
      raw = f.read()
    at = 0
    while at < len(raw):
      (length,) = struct.unpack("<Q", raw[at : at + 8])
      event = event_pb2.Event()
      event.ParseFromString(raw[at + 12 : at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """The toy run through main.py (8 devices: tests/conftest.py's XLA_FLAGS are inherited)."""
  workdir = str(tmp_path_factory.mktemp("toy") / "run")
  args = ["--config", "configs/toy/checkerboard.py", "--workdir", workdir]
  args += [f"--config.{name}={value}" for name, value in TOY_OVERRIDES.items()]
  result = run_main(args)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_main_applies_command_line_overrides(toy_run):
  workdir, result = toy_run
  assert "8 local devices of 8" in result.stderr
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  for name, value in TOY_OVERRIDES.items():
    section, field = name.split(".")
    assert saved[section][field] == value, name
  assert saved["data"]["dataset"] == "checkerboard"  # from --config
  assert fingerprint_logged(result.stderr)[0] == TOY_OVERRIDES["training.n_iters"]


def test_loss_falls(toy_run):
  workdir, _ = toy_run
  loss = read_scalars(os.path.join(workdir, "tensorboard"))["loss"]
  assert sorted(loss) == list(range(5, 81, 5))
  values = np.array([loss[s] for s in sorted(loss)])
  assert np.all(np.isfinite(values))
  # An untrained network outputs about 0, so the per-dimension DSM loss E|std * score + z|^2 is
  # E z^2 = 1 at first (0.9-1.0 at step 5, during warm-up); after 80 steps the toy run sits near
  # 0.3 (single-batch values 0.2-0.5: Monte-Carlo noise over t and x). Means of 3 logged losses.
  early, late = values[:3].mean(), values[-3:].mean()
  assert early > 0.6, values
  assert late < 0.6 * early, values


def test_checkpoint_restores_the_final_state(toy_run):
  workdir, result = toy_run
  config = toy_config()
  training = run_lib.build_training(config)
  abstract = training.experiment.abstract_state(training.optimizer)
  with checkpoints.CheckpointManager.from_config(workdir, config) as manager:
    # Pre-emption checkpoints at 20, 40, 60, 80: the two newest plus the snapshots (40, 80) stay.
    assert manager.steps() == [40, 60, 80]
    state, step = manager.restore_latest(abstract)
    assert manager.restore_config(step)["training"]["n_iters"] == 80
  assert step == 80 and int(state.step) == 80
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))
  # The checkpoint is bit for bit the state the run ended with (its logged fingerprint).
  assert run_lib.state_fingerprint(state) == fingerprint_logged(result.stderr)[1]


def test_snapshots_write_finite_samples(toy_run):
  workdir, _ = toy_run
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["40", "80"]
  for step in ("40", "80"):
    folder = os.path.join(workdir, "samples", step)
    with np.load(os.path.join(folder, "samples.npz")) as npz:
      samples = npz["samples"]
    assert samples.shape == (64, 2) and np.all(np.isfinite(samples))
    with Image.open(os.path.join(folder, "samples.png")) as image:
      assert image.format == "PNG" and min(image.size) > 16
  # Sanity of the EMA network's samples: the board is [-2, 2]^2, a run of 80 steps draws them there
  # (all within 2.1 here); a blown-up sampler (e.g. from the untrained network) gives |x| ~ 100.
  assert np.mean(np.all(np.abs(samples) < 2.5, axis=1)) > 0.9


def test_tensorboard_scalars(toy_run):
  workdir, _ = toy_run
  files = os.listdir(os.path.join(workdir, "tensorboard"))
  assert len(files) == 1 and files[0].startswith("events.out.tfevents")
  scalars = read_scalars(os.path.join(workdir, "tensorboard"))
  for tag in ("loss", "grad_norm", "lr", "steps_per_s", "images_per_s", "data_share"):
    assert set(scalars[tag]) == set(range(5, 81, 5)), tag
  assert set(scalars["eval_loss"]) == {40, 80} and set(scalars["sample_nfe"]) == {40, 80}
  assert scalars["sample_nfe"][80] == 50  # Euler-Maruyama, one score evaluation per step, N = 50
  # Linear warm-up over 10 steps to 1e-3: the learning rate of step k (0-based) is 1e-4 k.
  assert scalars["lr"][5] == pytest.approx(4e-4) and scalars["lr"][80] == pytest.approx(1e-3)
  for tag in ("images_per_s", "data_share"):
    assert all(v > 0 for v in scalars[tag].values())
  assert all(v < 1 for v in scalars["data_share"].values())


def test_default_config_is_the_digits_config():
  import logging

  import main

  # Parsing absl flags sets the absl logger's level (--verbosity); restore it for other tests.
  absl_level = logging.getLogger("absl").level
  main.FLAGS(["main.py", "--workdir", "unused"])
  try:
    expected = digits_ncsnpp_continuous.get_config().to_dict()
    assert main.FLAGS.config.to_dict() == expected
    assert main.FLAGS.config.data.dataset == "DIGITS" and main.FLAGS.mode == "train"
  finally:
    main.FLAGS.unparse_flags()
    logging.getLogger("absl").setLevel(absl_level)


def test_sample_mode_draws_from_the_newest_checkpoint(toy_run):
  workdir, _ = toy_run
  config = toy_config(eval__num_samples=128)
  run_lib.sample(config, workdir, eval_folder="eval")
  folder = os.path.join(workdir, "eval", "samples_80")
  with np.load(os.path.join(folder, "samples.npz")) as npz:
    samples = npz["samples"]
  assert samples.shape == (128, 2) and np.all(np.isfinite(samples))
  with open(os.path.join(folder, "info.json")) as f:
    assert json.load(f) == {"step": 80, "num_samples": 128, "nfe": 50}


def _equations(jaxpr):
  """Every equation of a jaxpr, including those of the jaxprs in its equations' parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


@pytest.mark.parametrize("n_jitted", [1, 4])
def test_train_step_has_no_rolled_loop(n_jitted):
  """The jitted train step is straight-line code: on CPU a rolled loop around convolution
  gradients runs about 30x slower (benchmarks/train_throughput.py, ENVIRONMENT.md). A lax.scan
  lowers to a while loop unless unroll covers its whole length and is not 1 (a scan of length 1
  with unroll=True is a while loop of one trip)."""
  config = toy_config(training__n_jitted_steps=n_jitted)
  config.training.update(snapshot_freq=4, snapshot_freq_for_preemption=4, log_freq=4, eval_freq=4)
  # make_jaxpr traces the step inside a jit, and compiler options are for top-level jits only.
  config.training.xla_cpu_ynn_fusion_type = None
  training = run_lib.build_training(config)
  state = training.experiment.abstract_state(training.optimizer)
  batches = {"image": jax.ShapeDtypeStruct((n_jitted, 64, 2), np.float32)}
  jaxpr = jax.make_jaxpr(training.train_step)(state, batches, jax.random.key(0)).jaxpr
  names = [eqn.primitive.name for eqn in _equations(jaxpr)]
  assert "while" not in names
  for eqn in _equations(jaxpr):
    if eqn.primitive.name == "scan":
      assert eqn.params["unroll"] in (0, eqn.params["length"]) and eqn.params["unroll"] != 1
  assert names.count("dot_general") >= 3 * n_jitted  # every step is there (forward + backward)


def test_train_step_compiler_options():
  """On CPU the train step is compiled with YNN fusion of reductions unless the config says
  otherwise (None: XLA's own default; "": off), and the compiled program shows it: YNN fusions
  of reductions only, none of convolutions."""
  config = toy_config()
  assert run_lib.train_compiler_options(config) == {
    run_lib.YNN_FUSION: run_lib.TRAIN_YNN_FUSION_TYPE
  }
  config.training.xla_cpu_ynn_fusion_type = None
  assert run_lib.train_compiler_options(config) is None
  config.training.xla_cpu_ynn_fusion_type = ""
  assert run_lib.train_compiler_options(config) == {run_lib.YNN_FUSION: ""}

  programs = {}
  for value in (run_lib.TRAIN_YNN_FUSION_TYPE, ""):
    config = toy_config()
    config.training.xla_cpu_ynn_fusion_type = value
    training = run_lib.build_training(config)
    state = training.init_state(jax.random.key(0))
    batches = {"image": np.zeros((1, 64, 2), np.float32)}
    lowered = training.train_step.lower(state, batches, jax.random.key(1))
    programs[value] = lowered.compile().as_text()
  assert "__ynn_fusion" in programs[run_lib.TRAIN_YNN_FUSION_TYPE]
  assert "__ynn_fusion" not in programs[""]


SHIPPED_CONFIGS = sorted(
  os.path.relpath(os.path.join(d, f), ROOT)
  for d, _, names in os.walk(os.path.join(ROOT, "configs"))
  for f in names
  if f.endswith(".py") and not f.startswith(("default_", "__"))
)


def test_every_shipped_config_passes_the_checks(tmp_path):
  """Every config in configs/ builds its training on 8 devices (every check, and the jitted
  functions, which compile only when first called); datasets that need files (TFDS, TFRecords)
  read one PNG of the right size instead."""
  import importlib

  from PIL import Image

  assert len(SHIPPED_CONFIGS) > 40
  failures = []
  for path in SHIPPED_CONFIGS:
    config = importlib.import_module(path[:-3].replace(os.sep, ".")).get_config()
    if config.data.dataset not in ("DIGITS", "IMAGE_FOLDER") and config.data.get("image_size"):
      size, channels = int(config.data.image_size), int(config.data.num_channels)
      folder = tmp_path / f"{size}x{channels}"
      if not folder.exists():
        folder.mkdir()
        pixels = np.zeros((size, size, channels), np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(folder / "0.png")
      config.data.update(dataset="IMAGE_FOLDER", data_dir=str(folder))
    try:
      run_lib.build_training(config)
    except Exception as error:  # collect them all, then report
      failures.append(f"{path}: {type(error).__name__}: {error}")
  assert not failures, "\n".join(failures)


BAD_CONFIGS = [
  (checkerboard, {"data.dataset": "cifar100"}, "config.data.dataset"),
  (checkerboard, {"training.batch_size": 60}, "config.training.batch_size"),
  (checkerboard, {"eval.batch_size": 100}, "config.eval.batch_size"),
  (checkerboard, {"sampling.batch_size": 20}, "config.sampling.batch_size"),
  (
    checkerboard,
    {"training.n_jitted_steps": 2, "training.snapshot_freq": 15},
    "config.training.snapshot_freq",
  ),
  (
    checkerboard,
    {"training.n_jitted_steps": 4, "training.log_freq": 6},
    "config.training.log_freq",
  ),
  (checkerboard, {"data.dim": 3}, "config.data.dim"),
  (checkerboard, {"training.objective": "nope"}, "config.training.objective"),
  (checkerboard, {"sampling.predictor": "nope"}, "config.sampling.predictor"),
  (checkerboard, {"sde.name": "nope"}, "config.sde.name"),
  (checkerboard, {"model.name": "nope"}, "config.model.name"),
  # Image sizes: one the digits do not come in, one the network cannot halve often enough, one
  # where the network's attention resolution never occurs.
  (
    digits_ncsnpp_continuous,
    {"data.image_size": 12, "model.attn_resolutions": (6,)},
    "config.data.image_size",
  ),
  (digits_ncsnpp_continuous, {"model.ch_mult": (1, 2, 2, 2, 2)}, "config.data.image_size"),
  (digits_ncsnpp_continuous, {"data.image_size": 16}, "config.model.attn_resolutions"),
  (digits_ncsnpp_continuous, {"data.num_channels": 3}, "config.data.num_channels"),
]


@pytest.mark.parametrize(
  "module,changes,field", BAD_CONFIGS, ids=[f"{c}" for _, c, _ in BAD_CONFIGS]
)
def test_config_errors_name_the_field_before_compiling(
  module, changes, field, tmp_path, monkeypatch
):
  assert jax.device_count() == 8
  config = override(module.get_config(), changes)

  def no_jit(*args, **kwargs):
    raise AssertionError("jax.jit was called before the config was checked")

  monkeypatch.setattr(jax, "jit", no_jit)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=re.escape(field)):
    run_lib.train(config, str(workdir))
  assert not workdir.exists()  # nothing written either


@pytest.mark.slow
def test_digits_default_runs_from_the_readme_command(tmp_path):
  """`python main.py --workdir ...` with no --config: the digits NCSN++ default, on the one real
  CPU device as a user runs it, for 2 steps and a snapshot with a 3-step sampler (no evaluation:
  the toy run covers it, and each compilation of this network takes tens of seconds here)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workdir = str(tmp_path / "digits")
  args = [
    "--workdir",
    workdir,
    "--config.training.n_iters=2",
    "--config.training.n_jitted_steps=1",
    "--config.training.snapshot_freq=2",
    "--config.training.snapshot_freq_for_preemption=2",
    "--config.training.log_freq=1",
    "--config.training.eval_freq=1000",
    "--config.sampling.batch_size=16",
    "--config.sde.N=3",
  ]
  result = run_main(args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 local devices of 1" in result.stderr
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["data"]["dataset"] == "DIGITS" and saved["model"]["name"] == "ncsnpp"
  with np.load(os.path.join(workdir, "samples", "2", "samples.npz")) as npz:
    samples = npz["samples"]
  assert samples.shape == (16, 8, 8, 1) and np.all(np.isfinite(samples))
  assert os.path.exists(os.path.join(workdir, "samples", "2", "samples.png"))
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
  scalars = read_scalars(os.path.join(workdir, "tensorboard"))
  assert np.isfinite(scalars["loss"][2]) and scalars["sample_nfe"][2] == 3
