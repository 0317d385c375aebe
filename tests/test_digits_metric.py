"""The offline digits metric: real digits score near the best value, degraded ones far worse, in order.

Measured with the cached classifier (CPU, jax 0.10.2): held-out accuracy 0.916; Frechet distance to the
297 held-out digits: 297 real training digits 4.5, the same blurred (Gaussian sigma 0.7 px) 12.2,
(sigma 1 px) 29.5, uniform noise 87. The thresholds below sit between these with wide margins, since
another CPU may train a slightly different classifier.
"""

import os

import numpy as np
import pytest
import scipy.ndimage

import evaluation


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def classifier(cache_dir):
  return evaluation.get_digits_classifier(cache_dir)


@pytest.fixture(scope="module")
def scores(classifier):
  rng = np.random.default_rng(0)
  train, _ = evaluation.load_digits_split("train")
  real = train[rng.permutation(len(train))[:297]]  # as many as the reference
  blur = lambda x, s: scipy.ndimage.gaussian_filter(x, (0, s, s, 0))
  samples = {
    "real": real,
    "blur_0.7": blur(real, 0.7),
    "blur_1": blur(real, 1.0),
    "noise": rng.uniform(size=real.shape),
    "zeros_only": train[evaluation.load_digits_split("train")[1] == 0],
  }
  return {name: evaluation.digits_metric(x, classifier=classifier) for name, x in samples.items()}


def test_split_and_classifier_accuracy(classifier):
  x_train, y_train = evaluation.load_digits_split("train")
  x_test, y_test = evaluation.load_digits_split("test")
  assert x_train.shape == (1500, 8, 8, 1) and x_test.shape == (297, 8, 8, 1)
  assert x_train.min() == 0.0 and x_train.max() == 1.0
  # About 10% of each class on both sides of the split.
  assert np.bincount(y_test).min() >= 25 and np.bincount(y_train).min() >= 140
  _, logits = classifier(x_test)
  assert logits.shape == (297, 10)
  # Measured 0.916 on the held-out writers (the training digits themselves: ~0.99).
  assert np.mean(logits.argmax(axis=1) == y_test) > 0.88


def test_real_digits_score_near_the_best_value(scores):
  real = scores["real"]
  # The best value is 0; real digits of other writers, 297 of them, measure 4.5 (finite-sample bias and
  # the writer shift), a sixth of what a mild blur scores.
  assert real["frechet_distance"] < 0.25 * scores["blur_1"]["frechet_distance"]
  assert real["confident_share"] >= real["reference_confident_share"] - 0.1
  # All ten classes about equally often: entropy within 0.05 nats of log 10.
  assert real["class_entropy"] > np.log(10) - 0.05
  assert real["reference_class_entropy"] > np.log(10) - 0.05


def test_degraded_digits_score_worse_in_order(scores):
  fd = {name: s["frechet_distance"] for name, s in scores.items()}
  # Monotone in the damage: real < mild blur < blur < noise, each step at least 1.5x.
  assert 1.5 * fd["real"] < fd["blur_0.7"]
  assert 1.5 * fd["blur_0.7"] < fd["blur_1"]
  assert 1.5 * fd["blur_1"] < fd["noise"]
  conf = {name: s["confident_share"] for name, s in scores.items()}
  assert conf["blur_1"] < conf["real"] - 0.3 and conf["noise"] < conf["real"] - 0.3
  assert scores["noise"]["class_entropy"] < np.log(10) - 0.5


def test_mode_collapse_shows_in_the_class_entropy(scores):
  collapsed = scores["zeros_only"]
  # Real zeros only: confidently classified, one class (entropy ~0), far from the ten-class reference.
  assert collapsed["class_entropy"] < 0.1
  assert collapsed["confident_share"] > 0.9
  assert collapsed["frechet_distance"] > scores["blur_1"]["frechet_distance"]


def test_reference_against_itself_is_exactly_best(classifier):
  x_test, _ = evaluation.load_digits_split("test")
  result = evaluation.digits_metric(x_test, classifier=classifier)
  assert result["frechet_distance"] == pytest.approx(0.0, abs=1e-9)
  assert result["class_entropy"] == result["reference_class_entropy"]
  assert result["num_samples"] == 297


def test_upsampled_and_out_of_range_samples(classifier):
  x, _ = evaluation.load_digits_split("train")
  x = x[:200]
  base = evaluation.digits_metric(x, classifier=classifier)
  # Samples at 16x16 (the digits configs' image_size 16: pixels repeated) are averaged back to 8x8,
  # and values outside [0, 1] are clipped as saved images would be.
  up = x.repeat(2, axis=1).repeat(2, axis=2)
  assert evaluation.digits_metric(up, classifier=classifier) == base
  pushed = np.where(x == 1.0, 1.3, np.where(x == 0.0, -0.2, x))
  assert evaluation.digits_metric(pushed[..., 0], classifier=classifier) == base
  with pytest.raises(ValueError, match=r"\[N, 8k, 8k, 1\]"):
    evaluation.digits_metric(np.zeros((4, 12, 12, 1)), classifier=classifier)


def test_classifier_is_cached(cache_dir, classifier):
  files = [f for f in os.listdir(cache_dir) if f.startswith("digits_classifier_")]
  assert len(files) == 1 and files[0].endswith(".npz")
  x, _ = evaluation.load_digits_split("test")
  again = evaluation.get_digits_classifier(cache_dir)  # loads the npz, trains nothing
  for a, b in zip(classifier(x), again(x), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_training_is_deterministic(cache_dir, classifier, tmp_path):
  x, _ = evaluation.load_digits_split("test")
  retrained = evaluation.get_digits_classifier(tmp_path)  # an empty cache: trains again
  for a, b in zip(classifier(x), retrained(x), strict=True):
    np.testing.assert_array_equal(a, b)


def test_split_is_the_one_datasets_serves():
  datasets = pytest.importorskip("datasets")
  if not hasattr(datasets, "DIGITS_NUM_TRAIN"):
    pytest.skip("datasets.py does not define DIGITS_NUM_TRAIN")
  assert datasets.DIGITS_NUM_TRAIN == evaluation.DIGITS_NUM_TRAIN
