"""Resume cost of the input pipeline: the time to the first batch of a stream resumed at batch k.

Two ways of resuming at batch k (= training step k) are timed for an IMAGE_FOLDER of PNGs and a
TFDS dataset built here from numpy (both 32x32x3, random flips and uniform dequantisation on):

  read through   next(itertools.islice(get_dataset(config), k, None)): every skipped batch is
                 read, decoded and augmented (how run_lib resumed before `start` existed)
  start=k        next(get_dataset(config, start=k)): the source starts at epoch kB // N and skips
                 kB mod N undecoded elements (file names, encoded records)

Both must give the same batch (checked). Times include building the pipeline.

  python benchmarks/resume_skip.py [--batches 10000] [--batch_size 16] [--examples 3000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
from configs import default_digits_configs  # noqa: E402


@datasets.register_dataset("RESUME_BENCH_TFDS")
class BenchTFDS(datasets.TFDSSource):
  tfds_name = "resume_bench"


def make_data(root: str, n: int) -> tuple[str, str]:
  """n random 32x32x3 images as PNG files and as a TFDS dataset; returns their directories."""
  from PIL import Image

  tf, tfds = datasets._tf()
  images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  folder = os.path.join(root, "pngs")
  os.makedirs(folder)
  for i, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
  tfds_dir = os.path.join(root, "tfds")
  tfds.dataset_builders.store_as_tfds_dataset(
    name="resume_bench",
    version="1.0.0",
    features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(32, 32, 3))}),
    split_datasets={"train": tf.data.Dataset.from_tensor_slices({"image": images})},
    data_dir=tfds_dir,
  )
  return folder, tfds_dir


def config_for(dataset: str, batch_size: int, **data):
  config = default_digits_configs.get_default_configs()
  config.data.update(
    dataset=dataset, image_size=32, num_channels=3, random_flip=True, uniform_dequantization=True
  )
  config.data.update(data)
  config.training.batch_size = batch_size
  return config


def timed(make) -> tuple[float, dict]:
  start = time.perf_counter()
  batch = make()
  return time.perf_counter() - start, batch


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=10_000, help="k: batches to skip")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--examples", type=int, default=3000, help="images in each dataset")
  args = parser.parse_args()
  k = args.batches
  with tempfile.TemporaryDirectory() as root:
    folder, tfds_dir = make_data(root, args.examples)
    configs = {
      "IMAGE_FOLDER": config_for("IMAGE_FOLDER", args.batch_size, data_dir=folder),
      "TFDS": config_for("RESUME_BENCH_TFDS", args.batch_size, data_dir=tfds_dir),
    }
    print(
      f"resume at batch k = {k}, host batch {args.batch_size}, {args.examples} images 32x32x3 "
      f"({k * args.batch_size / args.examples:.1f} epochs skipped)"
    )
    for name, config in configs.items():
      t_start, fast = timed(lambda config=config: next(datasets.get_dataset(config, start=k)))
      t_read, slow = timed(
        lambda config=config: next(itertools.islice(datasets.get_dataset(config), k, None))
      )
      for key in slow:
        np.testing.assert_array_equal(fast[key], slow[key])
      print(
        f"{name:13s} read through {t_read:8.2f} s   start=k {t_start:6.3f} s   "
        f"ratio {t_read / t_start:7.0f}x   (same batch: yes)"
      )


if __name__ == "__main__":
  main()
