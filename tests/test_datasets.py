"""datasets.py: layouts, splits, augmentation, seeding, per-host shards and config errors.

Toy distributions are checked against their closed forms; the digits against scikit-learn's arrays;
the TFDS, TFRecord and image-folder sources against small datasets these tests write themselves in
those formats (nothing is downloaded). Tests run on 8 virtual CPU devices (conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import datasets
from configs import default_digits_configs, default_toy_configs

DEVICES = jax.local_device_count()


def digits_config(**data) -> ml_collections.ConfigDict:
  config = default_digits_configs.get_default_configs()
  config.training.batch_size = 64
  config.eval.batch_size = 64
  config.data.update(data)
  return config


def toy_config(name: str, **data) -> ml_collections.ConfigDict:
  config = default_toy_configs.get_default_configs()
  config.data.dataset = name
  config.training.batch_size = 4096
  config.data.update(data)
  return config


def flat(batch: np.ndarray, ndim: int) -> np.ndarray:
  """[devices, per_device, *event] -> [devices * per_device, *event]."""
  return batch.reshape((-1,) + batch.shape[2:]) if ndim else batch


def sklearn_digits():
  from sklearn.datasets import load_digits

  d = load_digits()
  return d.images.astype(np.float64), d.target


# --- Layout, scaling, splits: the digits. --------------------------------------------------------


def test_digits_layout_values_and_scaler_round_trip():
  config = digits_config(centered=True)
  batch = next(datasets.get_dataset(config))
  assert batch["image"].shape == (DEVICES, 64 // DEVICES, 8, 8, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (DEVICES, 64 // DEVICES) and batch["label"].dtype == np.int32
  x01 = datasets.get_data_inverse_scaler(config)(batch["image"])
  # Centred values are 2 v / 16 - 1 for integers v in 0..16: back in [0, 1] they sit on the 1/16
  # grid up to float32 round-off (about 1e-7 after the two affine maps).
  np.testing.assert_allclose(x01 * 16, np.round(x01 * 16), atol=1e-5)
  assert x01.min() >= 0 and x01.max() <= 1 and batch["image"].min() < 0
  uncentred = next(datasets.get_dataset(digits_config(centered=False)))["image"]
  np.testing.assert_array_equal(uncentred * 16, np.round(uncentred * 16))
  assert uncentred.min() == 0.0 and uncentred.max() == 1.0


def test_digits_test_split_is_the_last_297_in_order():
  images, labels = sklearn_digits()
  config = digits_config(centered=False)
  config.eval.batch_size = 96  # 297 // 96 = 3 batches; the last 9 digits are dropped
  batches = list(datasets.get_dataset(config, split="test", evaluation=True))
  assert len(batches) == 3
  got_x = np.concatenate([flat(b["image"], 1) for b in batches])[..., 0]
  got_y = np.concatenate([flat(b["label"], 1) for b in batches])
  np.testing.assert_array_equal(got_y, labels[1500 : 1500 + 288])
  np.testing.assert_array_equal(got_x, images[1500 : 1500 + 288] / 16)


def test_digits_training_epoch_is_a_permutation_of_the_first_1500():
  images, _ = sklearn_digits()
  it = datasets.get_dataset(digits_config(centered=False))
  drawn = np.concatenate([flat(next(it)["image"], 1) for _ in range(24)])[:1500]  # 24 x 64 >= 1500

  def as_rows(x):  # images as sorted rows of integer pixel values
    rows = np.round(np.reshape(x, (len(x), -1)) * 16).astype(int)
    return rows[np.lexsort(rows.T[::-1])]

  # The first 1,500 draws are one epoch: exactly the training images, each once (as a multiset).
  assert np.array_equal(as_rows(drawn), as_rows(images[:1500] / 16))


def test_digits_upsampled_by_pixel_blocks():
  config = digits_config(centered=False, image_size=16)
  native = next(datasets.get_dataset(digits_config(centered=False), split="test", evaluation=True))
  big = next(datasets.get_dataset(config, split="test", evaluation=True))["image"]
  assert big.shape[2:] == (16, 16, 1)
  np.testing.assert_array_equal(big[:, :, ::2, ::2], native["image"])
  np.testing.assert_array_equal(big[:, :, 1::2, 1::2], native["image"])


def test_reproducible_from_the_seed():
  a = next(datasets.get_dataset(digits_config()))["label"]
  b = next(datasets.get_dataset(digits_config()))["label"]
  config = digits_config()
  config.seed = 7
  c = next(datasets.get_dataset(config))["label"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_hosts_read_disjoint_shards_and_independent_streams(monkeypatch):
  """Two hosts of 8 devices each: per-host batch = global / 2, and the shards partition the split."""
  images, labels = sklearn_digits()
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  config = digits_config(centered=False)
  config.eval.batch_size = 2 * 8 * 9  # 144 global, 72 per host: 148 test digits per host -> 2
  seen = []
  toys = []
  for host in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    batches = list(datasets.get_dataset(config, split="test", evaluation=True))
    assert [b["image"].shape for b in batches] == [(DEVICES, 9, 8, 8, 1)] * 2
    seen.append(np.concatenate([flat(b["label"], 1) for b in batches]))
    toys.append(next(datasets.get_dataset(toy_config("checkerboard")))["image"])
  # Host h reads test digits h, h + 2, h + 4, ...
  np.testing.assert_array_equal(seen[0], labels[1500::2][:144])
  np.testing.assert_array_equal(seen[1], labels[1501::2][:144])
  assert not np.array_equal(toys[0], toys[1])  # the process index is folded into the seed


# --- Augmentation through a user-registered source. ----------------------------------------------


@datasets.register_dataset("ramp_test_source")
class RampSource(datasets.Source):
  """Test source: image k holds the 8-bit values (k + 3 w + 17 h) mod 256 / 255; label k."""

  @property
  def shape(self):
    return (4, 4, 1)

  @property
  def has_labels(self):
    return True

  def host_batches(self, *, split, evaluation, batch_size, seed):
    k = 0
    while True:
      ids = np.arange(k, k + batch_size)
      h, w = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
      x = (ids[:, None, None] + 3 * w + 17 * h) % 256 / 255.0
      yield {"image": x[..., None], "label": ids}
      k += batch_size


def ramp_config(**data):
  config = digits_config(dataset="ramp_test_source", image_size=4, num_channels=None)
  config.data.update(data)
  config.training.batch_size = 4096
  return config


def test_user_source_random_flip_mirrors_about_half():
  config = ramp_config(random_flip=True, centered=False)
  batch = next(datasets.get_dataset(config))
  x, k = flat(batch["image"], 1), flat(batch["label"], 1)
  h, w = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
  clean = ((k[:, None, None] + 3 * w + 17 * h) % 256 / 255.0)[..., None].astype(np.float32)
  same = np.all(x == clean, axis=(1, 2, 3))
  mirrored = np.all(x == clean[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  # Flips are Bernoulli(1/2) over n = 4096 images: std sqrt(n / 4) = 32; allow 5 sigma.
  assert abs(mirrored.sum() - 2048) < 5 * 32
  no_flip = next(datasets.get_dataset(config, evaluation=True))["image"]
  assert np.array_equal(flat(no_flip, 1), clean[: len(flat(no_flip, 1))])


def test_uniform_dequantization_keeps_the_level_and_adds_uniform_noise():
  config = ramp_config(centered=False)
  x = flat(next(datasets.get_dataset(config, uniform_dequantization=True))["image"], 1)
  k = np.arange(4096)[:, None, None, None]
  h, w = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
  level = (k + 3 * w[..., None] + 17 * h[..., None]) % 256
  # (v + u) / 256 with u ~ U[0, 1): floor(256 x) recovers v, and 256 x - v is the uniform u.
  # float32 round-off of 256 x is below 3e-5, so floor is exact unless u is within that of 0 or 1.
  u = x.astype(np.float64) * 256 - level
  assert np.all((u > -1e-4) & (u < 1 + 1e-4))
  # Mean of n = 65,536 uniforms: std 1 / sqrt(12 n) = 1.1e-3; allow 5 sigma. Variance 1/12 likewise.
  assert abs(u.mean() - 0.5) < 5e-3
  assert abs(u.var() - 1 / 12) < 5e-3


# --- Toy distributions against their closed forms. -----------------------------------------------


def test_gaussian_mixture_moments_and_weights():
  weights = (0.1, 0.2, 0.3, 0.4)
  config = toy_config("gaussian_mixture", num_components=4, radius=3.0, component_std=0.5)
  config.data.weights = weights
  w, means, covs = datasets.gaussian_mixture_params(config)
  it = datasets.get_dataset(config)
  batches = [next(it) for _ in range(25)]
  x = np.concatenate([flat(b["image"], 1) for b in batches]).astype(np.float64)
  labels = np.concatenate([flat(b["label"], 1) for b in batches])
  n = len(x)  # 102,400
  mean = w @ means
  cov = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", means, means)) - np.outer(
    mean, mean
  )
  # Sample mean: std sqrt(cov_ii / n) <= sqrt(6.5 / 102400) = 0.008; allow 5 sigma.
  np.testing.assert_allclose(x.mean(0), mean, atol=5 * np.sqrt(np.diag(cov).max() / n))
  # Sample covariance entries: std about sqrt(2 / n) * max var ~ 0.03 for these heavy mixtures;
  # a 0.1 tolerance is over 3 sigma and still far below the entries (about 4).
  np.testing.assert_allclose(np.cov(x.T), cov, atol=0.1)
  freq = np.bincount(labels, minlength=4) / n
  # Multinomial frequencies: std sqrt(w (1 - w) / n) <= 0.0016; allow 5 sigma.
  np.testing.assert_allclose(freq, w, atol=5 * 0.0016)
  # Each point sits near its own component: |x - mean_label| / std is chi with 2 d.o.f.
  r = np.linalg.norm(x - means[labels], axis=1) / 0.5
  assert np.quantile(r, 0.5) == pytest.approx(np.sqrt(2 * np.log(2)), rel=0.02)


def test_checkerboard_support_and_uniform_cells():
  x = flat(next(datasets.get_dataset(toy_config("checkerboard")))["image"], 1)
  assert np.all(np.abs(x) <= 2)
  col, row = np.floor(x[:, 0]).astype(int), np.floor(x[:, 1]).astype(int)
  assert np.all((col + row) % 2 == 0)  # only black cells
  counts = np.bincount((row + 2) * 4 + (col + 2), minlength=16)
  black = counts[counts > 0]
  assert len(black) == 8
  # 4096 points in 8 equally likely cells: std sqrt(4096 / 8 * 7 / 8) = 21; allow 5 sigma.
  assert np.all(np.abs(black - 512) < 5 * 21.2)


def test_two_moons_exact_geometry_without_noise():
  batch = next(datasets.get_dataset(toy_config("two_moons", noise=0.0)))
  x, label = flat(batch["image"], 1), flat(batch["label"], 1)
  p = x / 2 + np.array([0.5, 0.25])  # undo the centring and scaling
  upper, lower = p[label == 0], p[label == 1] - np.array([1.0, 0.5])
  # float32 round-off of points of size ~3: 1e-6 relative.
  np.testing.assert_allclose(np.linalg.norm(upper, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(lower, axis=1), 1.0, atol=1e-5)
  assert np.all(upper[:, 1] >= -1e-6) and np.all(lower[:, 1] <= 1e-6)
  # Labels are fair coin flips: std 32 over 4096; allow 5 sigma.
  assert abs(label.sum() - 2048) < 160


def test_swiss_roll_exact_geometry_without_noise():
  x = flat(next(datasets.get_dataset(toy_config("swiss_roll", noise=0.0)))["image"], 1)
  x = x.astype(np.float64)
  r = np.linalg.norm(x, axis=1)  # r = s / 5, s in [1.5 pi, 4.5 pi]
  assert np.all((r >= 0.3 * np.pi - 1e-5) & (r <= 0.9 * np.pi + 1e-5))
  # The point is r (cos 5r, sin 5r); float32 storage gives ~1e-6 relative error in r, so the angle
  # 5r is off by ~1e-5 rad and the point by ~3e-5.
  np.testing.assert_allclose(x, r[:, None] * np.stack([np.cos(5 * r), np.sin(5 * r)], 1), atol=1e-4)
  # s is uniform, so r is uniform on [0.3 pi, 0.9 pi]: mean 0.6 pi, std of the mean
  # 0.6 pi / sqrt(12 * 4096) = 0.0085; allow 5 sigma.
  assert abs(r.mean() - 0.6 * np.pi) < 5 * 0.0085


def test_toy_evaluation_pass_is_finite_and_vectors_are_not_scaled():
  config = toy_config("checkerboard", num_examples=1000, centered=True)
  config.eval.batch_size = 128
  batches = list(datasets.get_dataset(config, split="test", evaluation=True))
  assert len(batches) == 1000 // 128
  assert batches[0]["image"].shape == (DEVICES, 128 // DEVICES, 2)
  # `centered` applies to images only: toy data keep their coordinates.
  assert datasets.get_data_scaler(config)(3.0) == 3.0
  train = next(datasets.get_dataset(config))["image"]
  test = next(datasets.get_dataset(config, split="test"))["image"]
  assert not np.array_equal(train, test)  # splits draw from independent streams


# --- Config errors, before anything compiles. ----------------------------------------------------


@pytest.mark.parametrize(
  "change, field",
  [
    (lambda c: c.data.update(dataset="cifar100_typo"), "config.data.dataset"),
    (lambda c: c.data.update(image_size=12), "config.data.image_size"),
    (lambda c: c.data.update(num_channels=3), "config.data.num_channels"),
    (lambda c: c.training.update(batch_size=60), "config.training.batch_size"),
  ],
)
def test_config_errors_name_the_field(change, field):
  config = digits_config()
  change(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    datasets.get_dataset(config)


MAIN_CONFIG_ERRORS = [
  ("configs/toy/checkerboard.py", "data.dataset=cifar100", "config.data.dataset"),
  ("configs/toy/checkerboard.py", "training.batch_size=60", "config.training.batch_size"),
  ("configs/digits/digits_mlp.py", "data.image_size=12", "config.data.image_size"),
  # The data are checked before the network, whose own check would blame attn_resolutions.
  ("configs/digits/digits_ncsnpp_continuous.py", "data.image_size=12", "config.data.image_size"),
]


@pytest.mark.parametrize("config_file, override, field", MAIN_CONFIG_ERRORS)
def test_main_train_config_errors_name_the_field_before_compiling(
  config_file, override, field, tmp_path
):
  """`main.py --mode train` with a wrong data field (8 devices): a ValueError naming the field,
  a non-zero exit, no work directory, and nothing compiled but the few eager array ops that
  building the SDE runs (JAX_LOG_COMPILES logs every compilation; a run that gets as far as the
  network compiles 50 functions, among them init and the train step)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_LOG_COMPILES": "1"}
  result = subprocess.run(
    [sys.executable, "main.py", "--config", config_file, "--workdir", str(workdir)]
    + ["--mode", "train", f"--config.{override}"],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("ValueError: ")]
  assert errors and field in errors[-1], result.stderr[-2000:]
  assert not workdir.exists()
  compiled = [line for line in result.stderr.splitlines() if "Compiling " in line]
  assert len(compiled) < 10, compiled
  assert not [line for line in compiled if any(w in line for w in ("step", "init", "sample"))]


def test_error_messages_give_choices_and_device_count():
  config = digits_config(dataset="nope")
  with pytest.raises(ValueError, match="Valid choices: .*cifar10.*digits.*two_moons"):
    datasets.get_dataset(config)
  config = digits_config()
  config.eval.batch_size = 100
  with pytest.raises(ValueError, match=rf"config\.eval\.batch_size = 100 .*\({DEVICES} ="):
    datasets.get_dataset(config, evaluation=True)
  with pytest.raises(ValueError, match=r"config\.data\.dim = 3"):
    datasets.get_dataset(toy_config("checkerboard", dim=3))
  with pytest.raises(ValueError, match="split"):
    datasets.get_dataset(digits_config(), split="validation")


# --- TensorFlow-based sources, on data written here in their formats. ----------------------------


def image_config(dataset: str, **data) -> ml_collections.ConfigDict:
  config = digits_config(dataset=dataset, image_size=32, num_channels=3, centered=False)
  config.data.update(data)
  config.training.batch_size = 8
  config.eval.batch_size = 8
  return config


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
  """A 24-image CIFAR-10 in the TFDS format, version 3.0.2, so the real CIFAR10 builder reads it."""
  tf, tfds = datasets._tf()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(24) % 10
  ids = np.array([f"id{i}".encode() for i in range(24)])
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(32, 32, 3)),
      "label": tfds.features.ClassLabel(num_classes=10),
      "id": tfds.features.Text(),
    }
  )
  split = lambda s: tf.data.Dataset.from_tensor_slices(
    {"image": images[s], "label": labels[s], "id": ids[s]}
  )
  tfds.dataset_builders.store_as_tfds_dataset(
    name="cifar10",
    version="3.0.2",
    features=features,
    split_datasets={"train": split(slice(0, 16)), "test": split(slice(16, 24))},
    data_dir=data_dir,
    disable_shuffling=True,
  )
  return data_dir, images, labels


def test_tfds_cifar10_reads_the_prepared_copy(fake_cifar10):
  data_dir, images, labels = fake_cifar10
  config = image_config("CIFAR10", data_dir=data_dir)
  batch = next(datasets.get_dataset(config, split="test", evaluation=True))
  assert batch["image"].shape == (DEVICES, 1, 32, 32, 3)
  np.testing.assert_array_equal(flat(batch["label"], 1), labels[16:24])
  # uint8 -> float32 by convert_image_dtype is v / 255 (float32 division: 1 ulp).
  np.testing.assert_allclose(flat(batch["image"], 1), images[16:24] / 255.0, atol=1e-7)
  # Training: an endless, shuffled, flipped stream of the 16 training images.
  config.data.random_flip = True
  train = datasets.get_dataset(config)
  x = np.concatenate([flat(next(train)["image"], 1) for _ in range(5)])
  assert x.shape == (40, 32, 32, 3)
  originals = images[:16] / 255.0
  for xi in x:
    assert np.any(
      [np.allclose(xi, o, atol=1e-6) or np.allclose(xi, o[:, ::-1], atol=1e-6) for o in originals]
    )


def test_tfds_resizes_to_the_configured_size(fake_cifar10):
  data_dir, _, _ = fake_cifar10
  config = image_config("CIFAR10", data_dir=data_dir, image_size=16, centered=True)
  x = next(datasets.get_dataset(config, split="test", evaluation=True))["image"]
  assert x.shape == (DEVICES, 1, 16, 16, 3)
  assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
  config = image_config("CIFAR10", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"tfds build cifar10 --data_dir .*data_dir"):
    datasets.get_dataset(config)
  assert not (tmp_path / "downloads").exists()  # nothing was fetched


def write_tfrecords(path: str, images: np.ndarray) -> None:
  """Writes images [N, H, W, C] uint8 in the paper's CelebA-HQ / FFHQ format (CHW raw bytes)."""
  tf, _ = datasets._tf()
  with tf.io.TFRecordWriter(path) as writer:
    for image in images:
      chw = np.ascontiguousarray(image.transpose(2, 0, 1))
      feature = {
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
        "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()])),
      }
      writer.write(
        tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
      )


def test_tfrecord_source_reads_chw_records(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  path = str(tmp_path / "ffhq-r03.tfrecords")
  write_tfrecords(path, images)
  config = image_config("FFHQ", tfrecords_path=path, image_size=8)
  batch = next(datasets.get_dataset(config, evaluation=True))
  assert set(batch) == {"image"}
  np.testing.assert_allclose(flat(batch["image"], 1), images[:8] / 255.0, atol=1e-7)
  with pytest.raises(ValueError, match=r"config\.data\.image_size = 16.*8x8"):
    datasets.get_dataset(image_config("FFHQ", tfrecords_path=path, image_size=16))
  with pytest.raises(ValueError, match=r"config\.data\.tfrecords_path"):
    datasets.get_dataset(image_config("CELEBAHQ", tfrecords_path=None))


def test_image_folder_with_class_subfolders(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (16, 6, 6, 3), dtype=np.uint8)
  for i, image in enumerate(images):
    folder = tmp_path / ("cats" if i % 2 else "dogs")
    folder.mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / f"{i:02d}.png")
  (tmp_path / "notes.txt").write_text("not an image")
  config = image_config("IMAGE_FOLDER", data_dir=str(tmp_path), image_size=6)
  batches = list(datasets.get_dataset(config, evaluation=True))
  x = np.concatenate([flat(b["image"], 1) for b in batches])
  y = np.concatenate([flat(b["label"], 1) for b in batches])
  # Sorted files: cats/01, cats/03, ..., dogs/00, ...; classes sorted: cats 0, dogs 1.
  order = [i for i in range(16) if i % 2] + [i for i in range(16) if not i % 2]
  np.testing.assert_array_equal(y, [0] * 8 + [1] * 8)
  np.testing.assert_allclose(x, images[order] / 255.0, atol=1e-7)  # PNG is lossless
  # A larger picture is centre-cropped to a square and resized to image_size.
  big = tmp_path / "big"
  big.mkdir()
  for i in range(8):
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(big / f"{i}.jpg")
  grey = image_config("IMAGE_FOLDER", data_dir=str(big), image_size=6, num_channels=1)
  batch = next(datasets.get_dataset(grey))
  assert batch["image"].shape == (DEVICES, 1, 6, 6, 1) and "label" not in batch
  with pytest.raises(ValueError, match=r"config\.data\.data_dir"):
    datasets.get_dataset(image_config("IMAGE_FOLDER", data_dir=None))
  with pytest.raises(FileNotFoundError, match=r"config\.data\.data_dir"):
    datasets.get_dataset(image_config("IMAGE_FOLDER", data_dir=os.path.join(tmp_path, "nope")))


def test_too_few_examples_for_one_batch_fails_at_construction():
  config = digits_config()
  config.eval.batch_size = 304  # 297 test digits
  with pytest.raises(ValueError, match="fewer than its batch of 304"):
    datasets.get_dataset(config, split="test", evaluation=True)  # no next() needed
  config = toy_config("two_moons", num_examples=100)
  config.eval.batch_size = 128
  with pytest.raises(ValueError, match=r"config\.data\.num_examples = 100"):
    datasets.get_dataset(config, evaluation=True)


# --- Resuming: start=k is the uninterrupted stream without its first k batches. -----------------


def take(iterator, n: int) -> list[dict]:
  return [next(iterator) for _ in range(n)]


def assert_same_batches(actual: list[dict], expected: list[dict]) -> None:
  """Bit for bit: every key, shape, dtype and value."""
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected, strict=True):
    assert a.keys() == e.keys()
    for key in e:
      assert a[key].dtype == e[key].dtype and a[key].shape == e[key].shape
      np.testing.assert_array_equal(a[key], e[key])


def write_pngs(folder, values) -> None:
  """One 4x4 grey PNG per value v, every pixel equal to v: the image names its file."""
  from PIL import Image

  folder.mkdir(parents=True, exist_ok=True)
  for i, v in enumerate(values):
    Image.fromarray(np.full((4, 4), v, np.uint8)).save(folder / f"{i:03d}.png")


def identity_config(dataset: str, **data) -> ml_collections.ConfigDict:
  """Host batch 8 (one example per device), 4x4 images, no augmentation unless asked."""
  config = image_config(dataset, image_size=4, num_channels=1, **data)
  config.training.batch_size = 8
  return config


def ids(batch: dict) -> np.ndarray:
  """The pixel value of each image of a batch (the file or record it came from)."""
  return np.round(flat(batch["image"], 1)[:, 0, 0, 0] * 255).astype(int)


@pytest.fixture
def small_blocks(monkeypatch):
  """TensorFlow streams in blocks of 2 epochs of the 20-example sets below, so the compared
  windows cross batch, epoch and block boundaries."""
  monkeypatch.setattr(datasets, "_MIN_BLOCK_EXAMPLES", 40)


@pytest.fixture
def image_folder(tmp_path):
  """20 grey PNGs in two class folders; image i has every pixel 10 i / 255."""
  write_pngs(tmp_path / "folder" / "a", range(0, 100, 10))
  write_pngs(tmp_path / "folder" / "b", range(100, 200, 10))
  return str(tmp_path / "folder")


@pytest.fixture
def tfrecord_file(tmp_path):
  """20 records of 4x4 grey images; record i has every pixel 10 i / 255."""
  path = str(tmp_path / "records.tfrecords")
  write_tfrecords(
    path,
    np.arange(0, 200, 10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8),
  )
  return path


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A 20-image TFDS dataset (registered under a made-up name) read by a TFDSSource subclass."""
  tf, tfds = datasets._tf()
  data_dir = str(tmp_path_factory.mktemp("tiny_tfds"))
  images = (
    np.arange(0, 200, 10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1))
  ).astype(np.uint8)
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(4, 4, 1)),
      "label": tfds.features.ClassLabel(num_classes=2),
    }
  )
  split = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(20) // 10})
  tfds.dataset_builders.store_as_tfds_dataset(
    name="tiny_resume_test",
    version="1.0.0",
    features=features,
    split_datasets={"train": split, "test": split},
    data_dir=data_dir,
    disable_shuffling=True,
  )
  return data_dir


@datasets.register_dataset("TINY_TFDS_TEST")
class TinyTFDS(datasets.TFDSSource):
  tfds_name = "tiny_resume_test"


SOURCES = ["DIGITS", "checkerboard", "IMAGE_FOLDER", "TFDS", "TFRECORD"]


@pytest.fixture
def source_config(request, image_folder, tfrecord_file, tiny_tfds, small_blocks):
  """A config of each kind of source, with random flips and dequantisation where they apply."""
  name = request.param
  augment = {"random_flip": True, "uniform_dequantization": True}
  if name == "DIGITS":
    config = digits_config(**augment)
    config.training.batch_size = 1000  # 1.5 epochs of 1,500 a batch: batches span epochs
  elif name == "checkerboard":
    config = toy_config("checkerboard")
  elif name == "IMAGE_FOLDER":
    config = identity_config("IMAGE_FOLDER", data_dir=image_folder, **augment)
  elif name == "TFDS":
    config = identity_config("TINY_TFDS_TEST", data_dir=tiny_tfds, shuffle_buffer_size=8, **augment)
  else:
    config = identity_config("FFHQ", tfrecords_path=tfrecord_file, shuffle_buffer_size=8, **augment)
  return config


@pytest.mark.parametrize("source_config", SOURCES, indirect=True)
def test_resumed_stream_is_the_tail_of_the_uninterrupted_one(source_config):
  """get_dataset(start=k) yields batches k, k + 1, ... of get_dataset(start=0), bit for bit, with
  flips and dequantisation noise. With 20 examples an epoch, 8 a batch and blocks of 2 epochs,
  k in {1, 2, 5, 7, 12} starts mid-epoch, at an epoch's start (batch 5 = example 40, also a block
  boundary) and in later blocks."""
  expected = take(datasets.get_dataset(source_config), 16)
  for k in (1, 2, 5, 7, 12):
    assert_same_batches(take(datasets.get_dataset(source_config, start=k), 4), expected[k : k + 4])
  # The stream is random (two batches differ), so equality above is not trivially true.
  assert not np.array_equal(expected[0]["image"], expected[1]["image"])


@pytest.mark.parametrize("source", ["IMAGE_FOLDER", "TFDS", "TFRECORD"])
def test_training_epochs_are_permutations(
  source, image_folder, tfrecord_file, tiny_tfds, small_blocks
):
  """Every epoch (20 examples: 5 batches hold epochs 0 and 1) holds each example exactly once, in
  an order that changes from epoch to epoch."""
  config = {
    "IMAGE_FOLDER": lambda: identity_config("IMAGE_FOLDER", data_dir=image_folder),
    "TFDS": lambda: identity_config("TINY_TFDS_TEST", data_dir=tiny_tfds, shuffle_buffer_size=8),
    "TFRECORD": lambda: identity_config(
      "FFHQ", tfrecords_path=tfrecord_file, shuffle_buffer_size=8
    ),
  }[source]()
  drawn = np.concatenate([ids(b) for b in take(datasets.get_dataset(config), 5)])
  first, second = drawn[:20], drawn[20:]
  np.testing.assert_array_equal(np.sort(first), np.arange(0, 200, 10))
  np.testing.assert_array_equal(np.sort(second), np.arange(0, 200, 10))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(0, 200, 10))  # shuffled


def test_evaluation_pass_resumes_too(image_folder):
  config = identity_config("IMAGE_FOLDER", data_dir=image_folder)
  full = list(datasets.get_dataset(config, evaluation=True))
  assert len(full) == 2  # 20 files, batches of 8, the last 4 dropped
  assert_same_batches(list(datasets.get_dataset(config, evaluation=True, start=1)), full[1:])
  with pytest.raises(ValueError, match="start = -1"):
    datasets.get_dataset(config, start=-1)


def corrupt_skipped(expected: list[dict], k: int) -> set[int]:
  """The ids read before batch k and not in batches k, k + 1, ... of `expected`."""
  before = {int(i) for b in expected[:k] for i in ids(b)}
  after = {int(i) for b in expected[k:] for i in ids(b)}
  skipped = before - after
  assert skipped  # something to prove
  return skipped


def test_image_folder_skips_files_before_decoding_them(image_folder, small_blocks):
  """The files of the batches before k, replaced by bytes that are no image, are never opened
  by a stream resumed at k (reading through the stream fails on them)."""
  config = identity_config("IMAGE_FOLDER", data_dir=image_folder)
  k = 4
  expected = take(datasets.get_dataset(config), k + 2)
  for value in corrupt_skipped(expected, k):
    folder = "a" if value < 100 else "b"
    with open(os.path.join(image_folder, folder, f"{(value % 100) // 10:03d}.png"), "wb") as f:
      f.write(b"not a png")
  assert_same_batches(take(datasets.get_dataset(config, start=k), 2), expected[k:])
  with pytest.raises(Exception, match="(?i)image"):
    take(datasets.get_dataset(config), k + 2)


def test_tfrecord_skips_records_before_decoding_them(tmp_path, small_blocks):
  """Likewise for records (the TFDS path skips undecoded records the same way): records read
  before batch k are rewritten with data of the wrong length, which decoding rejects."""
  values = np.arange(0, 200, 10, dtype=np.uint8)
  images = values[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  path = str(tmp_path / "records.tfrecords")
  write_tfrecords(path, images)
  config = identity_config("FFHQ", tfrecords_path=path, shuffle_buffer_size=8)
  k = 4
  expected = take(datasets.get_dataset(config), k + 2)
  skipped = corrupt_skipped(expected, k)
  tf, _ = datasets._tf()
  with tf.io.TFRecordWriter(path) as writer:
    for image in images:
      data = image.transpose(2, 0, 1).tobytes()
      if int(image[0, 0, 0]) in skipped:
        data = data[:-1]  # 15 bytes for a 1x4x4 image: the reshape fails
      feature = {
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=(1, 4, 4))),
        "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
      }
      writer.write(
        tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
      )
  assert_same_batches(take(datasets.get_dataset(config, start=k), 2), expected[k:])
  with pytest.raises(Exception, match="(?i)reshape"):
    take(datasets.get_dataset(config), k + 2)


def test_tfrecord_counts_records_and_rejects_a_truncated_file(tmp_path):
  path = str(tmp_path / "r.tfrecords")
  write_tfrecords(path, np.zeros((5, 2, 2, 3), np.uint8))
  assert datasets._count_records(path) == 5
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 3)
  with pytest.raises(ValueError, match="truncated"):
    datasets._count_records(path)


def test_user_source_without_start_is_skipped_by_reading(caplog):
  """RampSource.host_batches takes no `start`: get_dataset drops the batches itself, with a
  warning, and the result is still the tail of the stream (augmentation included)."""
  config = ramp_config(random_flip=True, uniform_dequantization=True)
  config.training.batch_size = 64
  expected = take(datasets.get_dataset(config), 5)
  assert_same_batches(take(datasets.get_dataset(config, start=3), 2), expected[3:])
  assert "takes no `start`" in caplog.text
