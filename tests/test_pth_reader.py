"""pth_reader: PyTorch .pth files read without torch, and nothing but arrays rebuilt from them.

The reference files under tests/fixtures/pth/ were written by real PyTorch (tools/make_pth_fixture.py,
torch 2.13), in the zip and the legacy format; expected.npz holds the same tensors as torch's own numpy.
"""

import os
import pickle
import struct
import subprocess
import zipfile

import numpy as np
import pytest

import pth_reader

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pth")


def _flatten(obj, prefix=""):
  out = {}
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  elif isinstance(obj, list | tuple) and prefix != "size":
    for i, v in enumerate(obj):
      out.update(_flatten(v, f"{prefix}/{i}"))
  return out


@pytest.mark.parametrize("name", ["zip.pth", "legacy.pth"])
def test_reads_files_written_by_torch(name):
  loaded = pth_reader.load_pth(os.path.join(FIXTURES, name))
  expected = np.load(os.path.join(FIXTURES, "expected.npz"))
  arrays = _flatten(loaded)
  assert sorted(arrays) == sorted(expected.files)
  for key in expected.files:
    # Bit-exact: the same bytes reinterpreted (bfloat16 widened exactly to float32).
    assert arrays[key].dtype == expected[key].dtype, key
    assert arrays[key].shape == expected[key].shape, key
    np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
  # Views keep their offset and strides; transposes their layout.
  np.testing.assert_array_equal(arrays["view_offset"], [2, 3, 4, 5])
  np.testing.assert_array_equal(arrays["view_strided"], [[1, 2], [6, 7]])
  assert arrays["transposed"].shape == (4, 3)
  assert loaded["state_dict"]["1.num_batches_tracked"].shape == ()
  assert type(loaded["state_dict"]) is dict
  assert loaded["size"] == (2, 3)
  assert loaded["misc"] == [1, 2.5, "text", None, True, (1, "a"), 2**40]


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_save_then_load_round_trip(tmp_path, byteorder):
  rng = np.random.default_rng(0)
  obj = {
    "w": rng.standard_normal((3, 2, 5)).astype(np.float32),
    "d": rng.standard_normal(4),
    "h": rng.standard_normal(3).astype(np.float16),
    "i": np.array([-(2**40), 3], np.int64),
    "j": np.arange(6, dtype=np.int32).reshape(2, 3),
    "b": np.array([True, False]),
    "u": np.array([0, 255], np.uint8),
    "scalar": np.array(1.5, np.float32),
    "empty": np.zeros((0, 2), np.float32),
    "non_contiguous": np.arange(12.0).reshape(3, 4).T,
    "nested": [{"x": np.ones(2)}, (np.zeros(1),), "s", 3, 2.5, None, False, 2**40],
  }
  path = tmp_path / "obj.pth"
  pth_reader.save_pth(obj, path, byteorder=byteorder)
  loaded = pth_reader.load_pth(path)
  flat_in, flat_out = _flatten(obj), _flatten(loaded)
  assert sorted(flat_in) == sorted(flat_out)
  for key, value in flat_in.items():
    assert flat_out[key].dtype == value.dtype.newbyteorder("="), key
    np.testing.assert_array_equal(flat_out[key], value, err_msg=key)
  assert loaded["nested"][2:] == ["s", 3, 2.5, None, False, 2**40]


def _zip_with_pickle(path, data_pkl: bytes, storages: dict[str, bytes] | None = None):
  with zipfile.ZipFile(path, "w") as file:
    file.writestr("archive/data.pkl", data_pkl)
    for key, data in (storages or {}).items():
      file.writestr(f"archive/data/{key}", data)


class _RunsCode:
  """Pickles as a call to `fn(*args)`: what an attacker puts in a .pth."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_refuses_code_in_the_pickle(tmp_path, fmt):
  marker = tmp_path / "pwned"
  payload = {"weight": _RunsCode(os.system, f"touch {marker}")}
  path = tmp_path / "evil.pth"
  if fmt == "zip":
    _zip_with_pickle(path, pickle.dumps(payload, protocol=2))
  else:
    with open(path, "wb") as f:
      for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, f, protocol=2)
      pickle.dump(payload, f, protocol=2)
      pickle.dump([], f, protocol=2)
  with pytest.raises(pth_reader.UnsafePickleError, match=rf"refusing to load {os.name}\w*\.system"):
    pth_reader.load_pth(path)
  assert not marker.exists()


@pytest.mark.parametrize(
  "fn, args", [(eval, ("1+1",)), (subprocess.call, (["true"],)), (np.load, ("x.npy",))]
)
def test_refuses_every_other_global(tmp_path, fn, args):
  path = tmp_path / "evil.pth"
  _zip_with_pickle(path, pickle.dumps([_RunsCode(fn, *args)], protocol=2))
  with pytest.raises(pth_reader.UnsafePickleError, match=f"refusing to load .*{fn.__name__}"):
    pth_reader.load_pth(path)


def _tensor_pickle(numel: int, size: tuple[int, ...], stride: tuple[int, ...], offset=0) -> bytes:
  """The opcodes torch writes for one float tensor on storage '0' (protocol 2), by hand."""

  def text(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()

  def ints(values):
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

  return (
    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
    + b"("
    + text("storage")
    + b"ctorch\nFloatStorage\n"
    + text("0")
    + text("cpu")
    + b"J"
    + struct.pack("<i", numel)
    + b"tQ"
    + b"J"
    + struct.pack("<i", offset)
    + ints(size)
    + ints(stride)
    + b"\x89ccollections\nOrderedDict\n)RtR."
  )


def test_hand_written_tensor_pickle_is_read(tmp_path):
  # Checks the hand-written opcodes of the corrupt-file tests below on a valid tensor first.
  path = tmp_path / "ok.pth"
  data = np.arange(6, dtype="<f4")
  _zip_with_pickle(path, _tensor_pickle(6, (2, 2), (3, 1), offset=1), {"0": data.tobytes()})
  np.testing.assert_array_equal(pth_reader.load_pth(path), [[1, 2], [4, 5]])


def test_refuses_a_tensor_reading_past_its_storage(tmp_path):
  path = tmp_path / "oob.pth"
  data = np.arange(6, dtype="<f4").tobytes()
  _zip_with_pickle(path, _tensor_pickle(6, (2, 3), (4, 1)), {"0": data})
  with pytest.raises(pth_reader.PthError, match="reads past the end of storage 0"):
    pth_reader.load_pth(path)


def test_refuses_a_storage_shorter_than_declared(tmp_path):
  path = tmp_path / "short.pth"
  _zip_with_pickle(path, _tensor_pickle(6, (6,), (1,)), {"0": b"\0" * 8})
  with pytest.raises(pth_reader.PthError, match="needs 24 bytes but the file holds 8"):
    pth_reader.load_pth(path)


def test_refuses_a_missing_storage(tmp_path):
  path = tmp_path / "missing.pth"
  _zip_with_pickle(path, _tensor_pickle(6, (6,), (1,)))
  with pytest.raises(pth_reader.PthError, match="archive/data/0 is missing"):
    pth_reader.load_pth(path)


@pytest.mark.parametrize(
  "evil",
  [
    # GLOBAL torch.FloatStorage, then BUILD with {'dtype': 'int8'} (an instance __dict__ update)...
    b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x04\x00\x00\x00int8sb.",
    # ... or with (None, {'dtype': 'int8'}) (setattr of slots).
    b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtypeX\x04\x00\x00\x00int8s\x86b.",
  ],
)
def test_pickle_cannot_alter_the_allow_list(tmp_path, evil):
  path = tmp_path / "build.pth"
  _zip_with_pickle(path, evil)
  with pytest.raises(pth_reader.PthError):
    pth_reader.load_pth(path)
  loaded = pth_reader.load_pth(os.path.join(FIXTURES, "zip.pth"))
  assert loaded["float32"].dtype == np.float32


@pytest.mark.parametrize("name", ["zip.pth", "legacy.pth"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_give_a_clear_error(tmp_path, name, keep):
  data = open(os.path.join(FIXTURES, name), "rb").read()
  path = tmp_path / name
  path.write_bytes(data[: int(len(data) * keep)])
  with pytest.raises(pth_reader.PthError, match="truncated or corrupt"):
    pth_reader.load_pth(path)


def test_not_a_pth_file(tmp_path):
  path = tmp_path / "noise.pth"
  path.write_bytes(
    np.random.default_rng(0).bytes(1000).replace(b"\x80", b"\x00").replace(b"PK", b"")
  )
  with pytest.raises(pth_reader.PthError, match="not a PyTorch .pth file"):
    pth_reader.load_pth(path)
  with pytest.raises(FileNotFoundError):
    pth_reader.load_pth(tmp_path / "absent.pth")
