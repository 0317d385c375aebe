"""The Flax FID Inception equals pytorch-fid's, with random weights written in the published layout.

tests/fixtures/inception/reference.npz holds what pytorch-fid's FID Inception computes with seeded
random weights on seeded inputs; tools/make_inception_fixture.py made it (its docstring says how to
re-run it: it needs torch). Here the same weights are regenerated with numpy, written as a `.pth` in
the published layout without torch (pth_reader.save_pth), loaded through the production path
(`load_inception_params`), and the network's outputs are compared with the fixture; its first blocks
are also re-computed directly in numpy (float64, batch norm not folded).
"""

import importlib.util
import json
import os

import numpy as np
import pytest

import evaluation
import pth_reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
  "make_inception_fixture", os.path.join(ROOT, "tools", "make_inception_fixture.py")
)
make_inception_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_inception_fixture)


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(make_inception_fixture.FIXTURE))


@pytest.fixture(scope="module")
def state_dict(reference):
  layout = [(key, tuple(shape)) for key, shape in json.loads(str(reference["layout"]))]
  weights = make_inception_fixture.random_state_dict(layout)
  assert make_inception_fixture.sha256_of(weights) == str(reference["weights_sha256"]), (
    "numpy generated other random weights than when the fixture was made (numpy's stream changed?):"
    " re-run tools/make_inception_fixture.py"
  )
  return weights


@pytest.fixture(scope="module")
def inception_path(state_dict, tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "inception.pth"
  pth_reader.save_pth(state_dict, path)
  return path


@pytest.fixture(scope="module")
def outputs(inception_path):
  """Flax outputs and intermediates on the reference inputs, through the production loading path."""
  params = evaluation.load_inception_params(inception_path)
  model = evaluation.FIDInceptionV3()
  # Compiled as get_inception_fn compiles it (jit_inference), plus the intermediates.
  apply = evaluation.jit_inference(
    lambda x: model.apply({"params": params}, x, mutable=["intermediates"])
  )
  inputs = make_inception_fixture.reference_inputs()
  out = {}
  for name, images in inputs.items():
    (pool3, logits), state = apply(images)
    out[name] = {"pool3": np.asarray(pool3), "logits": np.asarray(logits)}
    out[name].update({k: np.asarray(v[0]) for k, v in state["intermediates"].items()})
  return inputs, out


def _relative_error(a, b):
  return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


def test_the_inputs_are_the_fixtures(reference):
  inputs = make_inception_fixture.reference_inputs()
  assert make_inception_fixture.sha256_of(inputs) == str(reference["inputs_sha256"])


@pytest.mark.parametrize("name", ["32px", "299px"])
def test_matches_pytorch_fid(reference, outputs, name):
  _, out = outputs
  got = out[name]
  # float32 through 94 convolutions in a different order (XLA vs oneDNN, batch norm folded vs not):
  # each layer adds ~1e-7 relative round-off; measured ~4e-7 on pool3 and 6e-7 on the logits.
  # 1e-5 leaves room across CPUs and still catches any real difference (a wrong pooling rule, resize
  # convention or channel order changes these by 1e-2 or more).
  assert _relative_error(got["pool3"], reference[f"pool3_{name}"]) < 1e-5
  assert _relative_error(got["logits"], reference[f"logits_{name}"]) < 1e-5
  np.testing.assert_allclose(got["pool3"], reference[f"pool3_{name}"], rtol=1e-4, atol=1e-4)
  for i in range(3):
    block_mean = got[f"block{i}"].mean(axis=(1, 2))
    assert _relative_error(block_mean, reference[f"block{i}_mean_{name}"]) < 1e-5, i
  # The comparison discriminates: most pool-3 features are active, and two different images' features
  # differ by far more than the tolerance.
  assert np.mean(got["pool3"] > 0) > 0.5
  assert _relative_error(got["pool3"][0], got["pool3"][1]) > 1e-3


# --- a direct numpy re-computation of the first blocks (float64, batch norm as torch applies it) ---


def _np_resize(image, size):
  """torch's bilinear resize with align_corners=False, one output coordinate at a time."""

  def along(x, axis):
    n = x.shape[axis]
    rows = []
    for i in range(size):
      src = max((i + 0.5) * n / size - 0.5, 0.0)
      i0 = int(src)
      i1 = min(i0 + 1, n - 1)
      lam = src - i0
      rows.append((1 - lam) * np.take(x, i0, axis) + lam * np.take(x, i1, axis))
    return np.stack(rows, axis)

  return along(along(image, 0), 1)


def _np_conv_bn_relu(x, sd, prefix, stride=1, padding=(0, 0)):
  """x [H, W, C_in]; torch's OIHW weight; BatchNorm2d(eps=1e-3) in eval mode; ReLU."""
  w = sd[f"{prefix}.conv.weight"].astype(np.float64)
  _, _, kh, kw = w.shape
  ph, pw = padding
  x = np.pad(x, ((ph, ph), (pw, pw), (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]
  y = np.tensordot(windows, w, axes=([2, 3, 4], [1, 2, 3]))  # [H', W', C_out]
  gamma, beta = sd[f"{prefix}.bn.weight"], sd[f"{prefix}.bn.bias"]
  mean, var = sd[f"{prefix}.bn.running_mean"], sd[f"{prefix}.bn.running_var"]
  y = (y - mean) / np.sqrt(var.astype(np.float64) + 1e-3) * gamma + beta
  return np.maximum(y, 0.0)


def _np_max_pool(x, stride):
  return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(0, 1))[::stride, ::stride].max(
    axis=(3, 4)
  )


def _np_avg_pool_exclude_pad(x):
  """3x3, stride 1, padding 1, dividing by the number of pixels inside the image (TF's rule)."""
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  sums = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1)).sum(axis=(3, 4))
  ones = np.pad(np.ones(x.shape[:2]), 1)
  counts = np.lib.stride_tricks.sliding_window_view(ones, (3, 3)).sum(axis=(2, 3))
  return sums / counts[..., None]


def test_first_blocks_match_numpy(state_dict, outputs):
  inputs, out = outputs
  sd = state_dict
  image = inputs["32px"][0].astype(np.float64)
  x = 2.0 * _np_resize(image, 299) - 1.0
  x = _np_conv_bn_relu(x, sd, "Conv2d_1a_3x3", stride=2)
  x = _np_conv_bn_relu(x, sd, "Conv2d_2a_3x3")
  x = _np_conv_bn_relu(x, sd, "Conv2d_2b_3x3", padding=(1, 1))
  block0 = _np_max_pool(x, 2)
  x = _np_conv_bn_relu(block0, sd, "Conv2d_3b_1x1")
  x = _np_conv_bn_relu(x, sd, "Conv2d_4a_3x3")
  block1 = _np_max_pool(x, 2)
  m = "Mixed_5b"
  b1 = _np_conv_bn_relu(block1, sd, f"{m}.branch1x1")
  b5 = _np_conv_bn_relu(block1, sd, f"{m}.branch5x5_1")
  b5 = _np_conv_bn_relu(b5, sd, f"{m}.branch5x5_2", padding=(2, 2))
  b3 = _np_conv_bn_relu(block1, sd, f"{m}.branch3x3dbl_1")
  b3 = _np_conv_bn_relu(b3, sd, f"{m}.branch3x3dbl_2", padding=(1, 1))
  b3 = _np_conv_bn_relu(b3, sd, f"{m}.branch3x3dbl_3", padding=(1, 1))
  bp = _np_conv_bn_relu(_np_avg_pool_exclude_pad(block1), sd, f"{m}.branch_pool")
  mixed_5b = np.concatenate([b1, b5, b3, bp], axis=-1)
  got = out["32px"]
  assert got["block0"].shape[1:] == (73, 73, 64) and got["mixed_5b"].shape[1:] == (35, 35, 256)
  # float32 (Flax) against float64 (numpy) through 3, 5 and 8 layers: measured ~1e-7 relative.
  for name, expected in [("block0", block0), ("block1", block1), ("mixed_5b", mixed_5b)]:
    assert _relative_error(got[name][0], expected) < 1e-5, name
    np.testing.assert_allclose(
      got[name][0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def test_pools_exclude_padding_and_max_pool_pads_with_minus_infinity():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 5, 6, 2)).astype(np.float32) - 3.0  # all-negative corners matter
  np.testing.assert_allclose(
    np.asarray(evaluation._avg_pool_3x3_same(x))[0], _np_avg_pool_exclude_pad(x[0]), rtol=1e-6
  )
  # Max pool with padding 1: padded cells never win, even where every value is negative.
  padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  np.testing.assert_array_equal(
    np.asarray(evaluation._max_pool_3x3(x, 1, 1))[0], _np_max_pool(padded, 1)
  )


def test_bilinear_resize_matrix():
  # Same size: identity. Rows are convex combinations of at most two neighbours.
  np.testing.assert_array_equal(evaluation.bilinear_resize_matrix(7, 7), np.eye(7))
  for n_in, n_out in [(32, 299), (320, 299), (8, 3)]:
    m = evaluation.bilinear_resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-12)
    assert ((m > 0).sum(axis=1) <= 2).all()
  # 2x upsampling with half-pixel centres: weights (3/4, 1/4) alternating, edges clamped.
  expected = np.array(
    [[1, 0, 0], [0.75, 0.25, 0], [0.25, 0.75, 0], [0, 0.75, 0.25], [0, 0.25, 0.75], [0, 0, 1]]
  )
  np.testing.assert_allclose(evaluation.bilinear_resize_matrix(3, 6), expected, atol=1e-15)
  # 2x downsampling without antialias: each output is the mean of two inputs (s = 2i + 1/2).
  np.testing.assert_allclose(
    evaluation.bilinear_resize_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], atol=1e-15
  )


def test_missing_weights_file_says_where_to_get_it(tmp_path):
  path = tmp_path / "weights" / evaluation.INCEPTION_FILENAME
  with pytest.raises(FileNotFoundError) as error:
    evaluation.load_inception_params(path)
  message = str(error.value)
  assert str(path) in message and evaluation.INCEPTION_URL in message
  assert "config.eval.inception_path" in message


def test_published_name_with_wrong_checksum(tmp_path):
  path = tmp_path / evaluation.INCEPTION_FILENAME
  pth_reader.save_pth({"fc.weight": np.zeros((2, 2), np.float32)}, path)
  with pytest.raises(ValueError, match="SHA-256 .* incomplete or corrupt"):
    evaluation.load_inception_params(path)


def test_state_dict_layout_errors(state_dict):
  sd = dict(state_dict)
  # Tolerated: batch-norm counters and the auxiliary classifier, as torch state dicts may hold them.
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
  sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  params = evaluation.inception_params_from_state_dict(sd)
  assert params["Mixed_7c"]["branch_pool"]["kernel"].shape == (1, 1, 2048, 192)
  assert params["fc"]["kernel"].shape == (2048, 1008)
  with pytest.raises(ValueError, match="misses Mixed_6e.branch7x7_2.bn.running_var"):
    evaluation.inception_params_from_state_dict(
      {k: v for k, v in sd.items() if k != "Mixed_6e.branch7x7_2.bn.running_var"}
    )
  with pytest.raises(ValueError, match="does not use: \\['extra.weight'\\]"):
    evaluation.inception_params_from_state_dict({**sd, "extra.weight": np.zeros(1)})
  with pytest.raises(ValueError, match="Conv2d_2a_3x3.conv.weight has shape \\(32, 32, 3\\)"):
    evaluation.inception_params_from_state_dict(
      {**sd, "Conv2d_2a_3x3.conv.weight": np.zeros((32, 32, 3), np.float32)}
    )


def test_batched_features_pads_the_last_batch():
  calls = []

  def feature_fn(batch):
    calls.append(batch.shape[0])
    return batch.sum(axis=(1, 2, 3)), 2 * batch[:, 0, 0, 0]

  images = np.random.default_rng(1).uniform(size=(7, 2, 2, 3))
  sums, firsts = evaluation.batched_features(feature_fn, images, batch_size=3)
  assert calls == [3, 3, 3]
  np.testing.assert_allclose(sums, images.sum(axis=(1, 2, 3)))
  np.testing.assert_allclose(firsts, 2 * images[:, 0, 0, 0])
