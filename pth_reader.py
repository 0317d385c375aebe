"""Reads PyTorch `.pth` files into numpy, without PyTorch and without running code from the file.

A `.pth` written by `torch.save` is a pickle whose tensors point at raw storages kept beside it:
- the zip format (PyTorch >= 1.6): `<prefix>/data.pkl` holds the pickle, `<prefix>/data/<key>` the raw
  bytes of each storage, `<prefix>/byteorder` their byte order ("little" when absent);
- the legacy format (PyTorch < 1.6, e.g. the FID Inception weights of 2019): four pickles in a row
  (magic number, protocol version, system info, the object), the sorted list of storage keys, then each
  storage as an int64 element count followed by its little-endian bytes.

A pickle can name any Python callable and have it called while loading, so unpickling an untrusted
file with the standard `pickle.load` can run arbitrary code. This reader's unpickler resolves only the
globals PyTorch uses to rebuild tensors (`torch._utils._rebuild_tensor_v2` and friends, the storage
types) and `collections.OrderedDict`, each mapped to a local function that builds numpy arrays; any
other global (`os.system`, `builtins.eval`, a model class ...) is refused with an error naming it.

`save_pth` writes the zip format from numpy arrays (also without PyTorch), for tests and exports:
its files load with `torch.load(path, weights_only=True)` and with `load_pth`.

Usage:
  state_dict = load_pth("model.pth")   # nested dicts / lists / tuples with np.ndarray leaves
  save_pth({"fc.weight": w, "fc.bias": b}, "model.pth")
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

__all__ = ["PthError", "UnsafePickleError", "load_pth", "save_pth"]


class PthError(ValueError):
  """A `.pth` file that cannot be read: truncated, corrupt, or not a PyTorch file."""


class UnsafePickleError(PthError):
  """The pickle asked for a global that this reader does not allow."""


# Storage classes named by `torch.save` (e.g. GLOBAL 'torch FloatStorage') -> numpy dtype of the
# stored bytes. bfloat16 has no numpy dtype: its 16-bit words are widened to float32 on rebuild.
_STORAGE_DTYPES: dict[str, np.dtype] = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(np.uint16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
  "UntypedStorage": np.dtype(np.uint8),
}

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class _Frozen:
  """Base of every object the pickle can reach: no `__dict__`, and attributes set once in __init__.

  A pickle's BUILD opcode sets attributes on the object on top of its stack; on these objects it fails
  (caught as a corrupt file), so a file cannot alter the allow-list or a tensor checked for bounds.
  """

  __slots__ = ()

  def _init(self, **fields: Any) -> None:
    for name, value in fields.items():
      object.__setattr__(self, name, value)

  def __setattr__(self, name: str, value: Any) -> None:
    raise UnsafePickleError(f"refusing to set attribute {name!r} of {type(self).__name__}")


class _Allowed(_Frozen):
  """One allowed global: a local function standing in for the one the pickle names."""

  __slots__ = ("fn", "qualname")

  def __init__(self, qualname: str, fn: Any):
    self._init(qualname=qualname, fn=fn)

  def __call__(self, *args: Any) -> Any:
    return self.fn(*args)


class _StorageType(_Frozen):
  """Stands for a torch storage class (torch.FloatStorage, ...) named in the pickle."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    self._init(name=name, dtype=_STORAGE_DTYPES[name])

  def __call__(self, *args: Any) -> Any:
    raise UnsafePickleError(f"refusing to call torch.{self.name} from the pickle")


class _Storage:
  """A storage named in the pickle; `array` (1-D, native byte order) is filled once its bytes are read.

  Only `persistent_load` creates these, and the pickle never gets hold of one but through a tensor.
  """

  __slots__ = ("key", "storage_type", "numel", "array")

  def __init__(self, key: str, storage_type: _StorageType, numel: int):
    self.key = key
    self.storage_type = storage_type
    self.numel = numel
    self.array: np.ndarray | None = None


class _StorageView(_Frozen):
  """A legacy-format view into a root storage: elements [offset, offset + numel)."""

  __slots__ = ("root", "offset", "numel", "storage_type")

  def __init__(self, root: _Storage, offset: int, numel: int):
    self._init(root=root, offset=offset, numel=numel, storage_type=root.storage_type)


class _TensorRef(_Frozen):
  """A tensor to rebuild once the storage bytes are known (the legacy format stores them last)."""

  __slots__ = ("storage", "offset", "size", "stride")
  __hash__ = None  # torch tensors are not valid dict keys in a state dict either.

  def __init__(self, storage: Any, offset: int, size: Any, stride: Any):
    if not isinstance(storage, _Storage | _StorageView):
      raise PthError(
        f"a tensor in the pickle is built from {type(storage).__name__}, not a storage"
      )
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if len(size) != len(stride):
      raise PthError(f"tensor size {size} and stride {stride} have different lengths")
    self._init(storage=storage, offset=int(offset), size=size, stride=stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor / _rebuild_tensor_v2 (extra arguments: requires_grad, hooks, metadata)."""
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks[, state]): the tensor itself."""
  return data


# The whole allow-list: (module, name) as written in the pickle -> local replacement.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  **{
    ("torch._utils", name): _Allowed(f"torch._utils.{name}", fn)
    for name, fn in [
      ("_rebuild_tensor", _rebuild_tensor),
      ("_rebuild_tensor_v2", _rebuild_tensor),
      ("_rebuild_parameter", _rebuild_parameter),
      ("_rebuild_parameter_with_state", _rebuild_parameter),
    ]
  },
  ("torch", "Size"): tuple,
  **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only `_ALLOWED_GLOBALS` and turns storages into `_Storage`s."""

  def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage], zip_format: bool):
    super().__init__(file, encoding="utf-8")
    self._storages = storages
    self._zip_format = zip_format

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f"refusing to load {module}.{name} from the pickle: only tensors, storages and plain "
        "containers are allowed (a .pth is never allowed to run code)"
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage":
      raise PthError(f"unknown persistent id {pid!r} in the pickle (only storages are supported)")
    if self._zip_format:
      if len(pid) != 5:
        raise PthError(f"malformed storage id {pid!r}")
      _, storage_type, key, _location, numel = pid
      view = None
    else:
      if len(pid) != 6:
        raise PthError(f"malformed storage id {pid!r}")
      _, storage_type, key, _location, numel, view = pid
    if not isinstance(storage_type, _StorageType):
      raise PthError(f"storage id {pid!r} names no storage type")
    key = _ascii(key)
    storage = self._storages.get(key)
    if storage is None:
      storage = self._storages[key] = _Storage(key, storage_type, int(numel))
    if view is None:
      return storage
    _view_key, offset, view_numel = view
    return _StorageView(storage, int(offset), int(view_numel))


def _ascii(value: str | bytes) -> str:
  return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_bytes_to_array(
  data: bytes, storage: _Storage, byteorder: str, where: str
) -> np.ndarray:
  dtype = storage.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
  nbytes = storage.numel * dtype.itemsize
  if len(data) < nbytes:
    raise PthError(
      f"{where}: storage {storage.key} needs {nbytes} bytes but the file holds {len(data)}; "
      "the file is truncated or corrupt"
    )
  return np.frombuffer(data, dtype=dtype, count=storage.numel).astype(dtype.newbyteorder("="))


def _tensor_to_array(ref: _TensorRef) -> np.ndarray:
  storage = ref.storage
  base_offset = 0
  if isinstance(storage, _StorageView):
    base_offset, storage = storage.offset, storage.root
  flat = storage.array
  if flat is None:
    raise PthError(f"the bytes of storage {storage.key} are missing from the file")
  view_numel = flat.size - base_offset
  if isinstance(ref.storage, _StorageView):
    view_numel = min(view_numel, ref.storage.numel)
  if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
    raise PthError(f"tensor with negative size / stride / offset: {ref.size} {ref.stride}")
  if 0 in ref.size:
    out = np.zeros(ref.size, flat.dtype)
  else:
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= view_numel:
      raise PthError(
        f"a tensor of size {ref.size} and stride {ref.stride} at offset {ref.offset} reads past "
        f"the end of storage {storage.key} ({view_numel} elements); the file is corrupt"
      )
    start = base_offset + ref.offset
    strides = tuple(s * flat.itemsize for s in ref.stride)
    out = np.lib.stride_tricks.as_strided(flat[start:], ref.size, strides, writeable=False).copy()
  if storage.storage_type.name == "BFloat16Storage":
    # bfloat16 is the top half of a float32: shift its 16 bits up.
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _materialise(obj: Any) -> Any:
  """Replaces every `_TensorRef` by its array and OrderedDicts by plain dicts, recursively."""
  if isinstance(obj, _TensorRef):
    return _tensor_to_array(obj)
  if isinstance(obj, dict):
    return {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_materialise(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialise(v) for v in obj)
  if isinstance(obj, _Storage | _StorageView | _StorageType):
    raise PthError("a bare storage in the pickle is not supported (only tensors are)")
  return obj


def _load_zip(file: zipfile.ZipFile, where: str) -> Any:
  names = file.namelist()
  pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
  if len(pickles) != 1:
    raise PthError(f"{where}: a .pth zip holds one data.pkl, found {len(pickles)}")
  prefix = pickles[0][: -len("data.pkl")]
  byteorder = "little"
  if prefix + "byteorder" in names:
    byteorder = file.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
      raise PthError(f"{where}: unknown byte order {byteorder!r}")
  storages: dict[str, _Storage] = {}
  obj = _RestrictedUnpickler(io.BytesIO(file.read(pickles[0])), storages, zip_format=True).load()
  for key, storage in storages.items():
    record = f"{prefix}data/{key}"
    if record not in names:
      raise PthError(f"{where}: storage record {record} is missing; the file is corrupt")
    storage.array = _storage_bytes_to_array(file.read(record), storage, byteorder, where)
  return obj


def _load_legacy(stream: io.BufferedIOBase, where: str) -> Any:
  def plain() -> Any:  # one pickle with no storages; a fresh unpickler each, as it reads ahead
    return _RestrictedUnpickler(stream, {}, zip_format=False).load()

  if plain() != _LEGACY_MAGIC_NUMBER:
    raise PthError(f"{where} is neither a zip nor a legacy PyTorch file (wrong magic number)")
  protocol = plain()
  if protocol != _LEGACY_PROTOCOL_VERSION:
    raise PthError(f"{where}: unsupported legacy protocol version {protocol}")
  sys_info = plain()
  if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
    raise PthError(f"{where}: written on a big-endian machine by a legacy PyTorch; not supported")
  storages: dict[str, _Storage] = {}
  obj = _RestrictedUnpickler(stream, storages, zip_format=False).load()
  keys = plain()
  for key in keys:
    key = _ascii(key)
    if key not in storages:
      raise PthError(f"{where}: storage {key} is listed but no tensor uses it; the file is corrupt")
    storage = storages[key]
    count = stream.read(8)
    if len(count) != 8:
      raise PthError(f"{where}: the file ends before storage {key}; it is truncated")
    (numel,) = struct.unpack("<q", count)
    if numel != storage.numel:
      raise PthError(
        f"{where}: storage {key} has {numel} elements, the pickle says {storage.numel}"
      )
    data = stream.read(numel * storage.storage_type.dtype.itemsize)
    storage.array = _storage_bytes_to_array(data, storage, "little", where)
  return obj


def load_pth(path: str | os.PathLike) -> Any:
  """Loads a PyTorch `.pth` file as numpy arrays, refusing anything but tensors and containers.

  Args:
    path: a file written by `torch.save` (zip or legacy format).

  Returns:
    The saved object with every tensor (and `nn.Parameter`) as an `np.ndarray` of the same shape and
    dtype (bfloat16 becomes float32), `OrderedDict`s as plain `dict`s; lists, tuples, numbers,
    strings and None as they are.

  Raises:
    FileNotFoundError: no such file.
    UnsafePickleError: the pickle names a global outside the allow-list (the message names it).
    PthError: the file is truncated, corrupt, or not a PyTorch file.
  """
  where = os.fspath(path)
  with open(where, "rb") as f:
    head = f.read(4)
    f.seek(0)
    try:
      is_zip = zipfile.is_zipfile(f)
      f.seek(0)
      if is_zip:
        with zipfile.ZipFile(f) as file:
          obj = _load_zip(file, where)
      elif head.startswith(b"PK"):
        raise PthError(f"{where} is a zip archive without its directory: truncated or corrupt")
      elif head[:1] == b"\x80":
        obj = _load_legacy(f, where)
      else:
        raise PthError(f"{where} is not a PyTorch .pth file (neither zip nor pickle)")
      return _materialise(obj)
    except PthError:
      raise
    except (
      pickle.UnpicklingError,
      zipfile.BadZipFile,
      EOFError,
      ValueError,
      KeyError,
      IndexError,
      TypeError,
      AttributeError,
      struct.error,
      RecursionError,
      MemoryError,
    ) as e:
      raise PthError(
        f"could not read {where} as a PyTorch .pth file ({type(e).__name__}: {e}); "
        "it is truncated or corrupt"
      ) from e


# Writing: a minimal protocol-2 pickle emitter. It writes the opcodes `torch.save` would for tensors
# (GLOBAL torch._utils._rebuild_tensor_v2 + a persistent storage id) without importing torch.
_STORAGE_NAMES = {
  dtype: name
  for name, dtype in _STORAGE_DTYPES.items()
  if name not in ("UntypedStorage", "BFloat16Storage")
}


class _PickleWriter:
  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[np.ndarray] = []

  def _op(self, data: bytes) -> None:
    self.out.write(data)

  def _global(self, module: str, name: str) -> None:
    self._op(b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")

  def _ordered_dict(self) -> None:
    self._global("collections", "OrderedDict")
    self._op(b")R")  # EMPTY_TUPLE, REDUCE: OrderedDict()

  def dump(self, obj: Any) -> None:
    if obj is None:
      self._op(b"N")
    elif obj is True or obj is False:
      self._op(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int | np.integer):
      value = int(obj)
      if -(2**31) <= value < 2**31:
        self._op(b"J" + struct.pack("<i", value))
      else:
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        self._op(b"\x8a" + struct.pack("<B", len(data)) + data)
    elif isinstance(obj, float | np.floating):
      self._op(b"G" + struct.pack(">d", float(obj)))
    elif isinstance(obj, str):
      data = obj.encode("utf-8")
      self._op(b"X" + struct.pack("<I", len(data)) + data)
    elif isinstance(obj, np.ndarray):
      self._tensor(obj)
    elif isinstance(obj, tuple):
      self._op(b"(")
      for item in obj:
        self.dump(item)
      self._op(b"t")
    elif isinstance(obj, list):
      self._op(b"](")
      for item in obj:
        self.dump(item)
      self._op(b"e")
    elif isinstance(obj, dict):
      # Dicts are written as OrderedDicts, as torch's state dicts are.
      self._ordered_dict()
      self._op(b"(")
      for key, value in obj.items():
        self.dump(key)
        self.dump(value)
      self._op(b"u")
    else:
      raise TypeError(f"save_pth cannot write a {type(obj).__name__}")

  def _tensor(self, array: np.ndarray) -> None:
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _STORAGE_NAMES:
      raise TypeError(f"save_pth cannot write arrays of dtype {array.dtype}")
    key = str(len(self.storages))
    self.storages.append(np.ascontiguousarray(array, dtype))
    self._global("torch._utils", "_rebuild_tensor_v2")
    self._op(b"(")
    self._op(b"(")  # the persistent id: ('storage', type, key, location, numel)
    self.dump("storage")
    self._global("torch", _STORAGE_NAMES[dtype])
    self.dump(key)
    self.dump("cpu")
    self.dump(array.size)
    self._op(b"tQ")  # TUPLE, BINPERSID
    self.dump(0)  # storage offset
    self.dump(tuple(array.shape))
    strides, step = [], 1
    for n in reversed(array.shape):
      strides.append(step)
      step *= n
    self.dump(tuple(reversed(strides)))
    self.dump(False)  # requires_grad
    self._ordered_dict()  # backward hooks
    self._op(b"tR")  # TUPLE, REDUCE


def save_pth(obj: Any, path: str | os.PathLike, *, byteorder: str = "little") -> None:
  """Writes nested dicts / lists / tuples of numpy arrays as a PyTorch zip-format `.pth`.

  Args:
    obj: dicts (written as OrderedDicts, like torch state dicts), lists, tuples, str, int, float, bool,
      None, and np.ndarray leaves (float16/32/64, int8/16/32/64, uint8, bool, complex) as tensors.
    path: the file to write.
    byteorder: "little" or "big": the byte order of the stored tensors (recorded in the file).
  """
  if byteorder not in ("little", "big"):
    raise ValueError(f"byteorder must be 'little' or 'big', not {byteorder!r}")
  writer = _PickleWriter()
  writer._op(b"\x80\x02")  # PROTO 2
  writer.dump(obj)
  writer._op(b".")  # STOP
  order = "<" if byteorder == "little" else ">"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as file:
    file.writestr("archive/data.pkl", writer.out.getvalue())
    file.writestr("archive/byteorder", byteorder)
    for key, array in enumerate(writer.storages):
      file.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder(order)).tobytes())
    file.writestr("archive/version", "3\n")
