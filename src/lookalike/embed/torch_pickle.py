"""Read PyTorch checkpoints (state_dicts) into numpy arrays without importing torch.

Why: the pretrained weights we ship against come as ``.pth`` files, but torch is a ~700 MB
dependency we do not want at run time. A state_dict is just a pickle of tensors that point at
raw little-endian buffers, so a small, *restricted* unpickler is enough. Restricting the globals
also means a malicious checkpoint cannot execute code: anything outside the allow-list raises.

Two on-disk layouts are supported:

* legacy (torch < 1.6, ``_use_new_zipfile_serialization=False``): a stream of pickles
  (magic number, protocol version, sys info, the object itself, the list of storage keys) followed
  by, for each storage key in that order, an int64 element count and the raw bytes;
* zip (torch >= 1.6 default): ``<archive>/data.pkl`` plus one raw file ``<archive>/data/<key>``
  per storage.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["TorchPickleError", "read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage class name -> numpy dtype of one element. bfloat16 has no numpy dtype: it is read as
# uint16 and widened to float32 (exact) when the tensor is materialised.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(ValueError):
    """The file is not a checkpoint this reader understands (or tries to load forbidden objects)."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only its name (hence dtype) matters."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """A storage whose bytes may arrive after the pickle (legacy format), so it is filled lazily."""

    stype: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _StorageView:
    """Legacy-format view into a root storage (the root's bytes may not be read yet)."""

    root: _Storage
    offset: int


@dataclass
class _LazyTensor:
    """Result of ``_rebuild_tensor_v2``; turned into an ndarray once all storages are loaded."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise TorchPickleError(f"storage {self.storage.key!r} has no data")
        n = int(np.prod(self.size, dtype=np.int64)) if self.size else 1
        start = self.offset
        if n > 0:
            last = start + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=True))
            if start < 0 or last >= data.size or any(st < 0 for st in self.stride):
                raise TorchPickleError(f"tensor view out of bounds of storage {self.storage.key!r}")
            view = np.lib.stride_tricks.as_strided(
                data[start:],
                shape=self.size,
                strides=tuple(st * data.itemsize for st in self.stride),
                writeable=False,
            )
            arr = np.array(view, dtype=data.dtype.newbyteorder("="), order="C")
        else:
            arr = np.empty(self.size, dtype=data.dtype.newbyteorder("="))
        if self.storage.stype.name == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def _rebuild_tensor_v2(
    storage: _Storage | _StorageView,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    base = 0
    if isinstance(storage, _StorageView):
        storage, base = storage.root, storage.offset
    if not isinstance(storage, _Storage):
        raise TorchPickleError("_rebuild_tensor_v2 called without a storage")
    shape, strides = tuple(int(d) for d in size), tuple(int(d) for d in stride)
    return _LazyTensor(storage, base + int(storage_offset), shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the handful of globals a plain state_dict needs."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchPickleError(f"checkpoint refers to forbidden global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        # legacy: ('storage', type, key, location, numel, view_metadata)
        # zip:    ('storage', type, key, location, numel)
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise TorchPickleError(f"unsupported persistent id {pid!r}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, _StorageType):
            raise TorchPickleError(f"unsupported storage type {stype!r}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(stype, key, int(numel))
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            # Legacy storage views: (view_key, offset, view_size) into the root storage.
            _view_key, view_offset, _view_size = view
            return _StorageView(storage, int(view_offset))
        return storage


def _collect(obj: Any) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise TorchPickleError(f"checkpoint holds a {type(obj).__name__}, not a state_dict")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise TorchPickleError(f"state_dict entry {name!r} is not a tensor")
        out[str(name)] = value.materialise()
    return out


def _read_legacy(f: BinaryIO) -> dict[str, np.ndarray]:
    if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
        raise TorchPickleError("not a torch checkpoint (bad magic number)")
    if _RestrictedUnpickler(f).load() != _LEGACY_PROTOCOL:
        raise TorchPickleError("unsupported legacy torch protocol version")
    sys_info = _RestrictedUnpickler(f).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchPickleError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, storages).load()
    keys = _RestrictedUnpickler(f).load()
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise TorchPickleError(f"storage {key!r} listed but never referenced")
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * storage.stype.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise TorchPickleError("truncated checkpoint")
        storage.data = np.frombuffer(buf, dtype=storage.stype.dtype)
    return _collect(obj)


def _read_zip(zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
    names = zf.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
    if pkl is None:
        raise TorchPickleError("zip checkpoint without <archive>/data.pkl")
    prefix = pkl[: -len("data.pkl")]
    if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
        raise TorchPickleError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl)), storages).load()
    for key, storage in storages.items():
        buf = zf.read(f"{prefix}data/{key}")
        need = storage.numel * storage.stype.dtype.itemsize
        if len(buf) < need:
            raise TorchPickleError(f"storage {key!r} is truncated")
        storage.data = np.frombuffer(buf, dtype=storage.stype.dtype, count=storage.numel)
    return _collect(obj)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a torch ``state_dict`` file as ``{name: contiguous ndarray}`` without torch.

    Raises :class:`TorchPickleError` for anything that is not a flat mapping of tensors, and for
    pickles that reference globals other than OrderedDict, ``_rebuild_tensor_v2`` and storage types.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _read_zip(zf)
    with open(path, "rb") as f:
        try:
            return _read_legacy(f)
        except (pickle.UnpicklingError, EOFError, struct.error) as exc:
            raise TorchPickleError(f"cannot read torch checkpoint {os.fspath(path)!r}: {exc}") from exc
