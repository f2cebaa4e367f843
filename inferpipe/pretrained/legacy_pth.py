"""Read a legacy (non-zip) PyTorch ``.pth`` state dict into numpy arrays, without torch.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names. This reader
resolves exactly the globals a plain state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the typed storage classes) to inert stand-ins of its own;
any other global, or an unknown persistent id, is ``UntrustedPickleError`` naming it. Nothing
from the file is ever called.

Layout of the legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``): five
pickles in a row (magic number, protocol version, system info, the object with storages as
persistent ids, the list of storage keys), then for each key in that order an int64 element
count followed by the storage's raw little-endian bytes.

Example::

    tensors = read_state_dict(Path("efficientnet-lite0-57934424.pth"))
    tensors["_conv_stem.weight"].shape      # (32, 3, 3, 3), float32
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: torch's magic number and protocol version for the legacy format (torch/serialization.py).
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: The storage classes a state dict may hold, and their numpy dtypes (all little-endian).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
#: A storage larger than this is refused before it is read (the file could claim anything).
MAX_STORAGE_BYTES = 1 << 30


class UntrustedPickleError(ValueError):
    """The file is not a plain legacy PyTorch state dict, or asks for something it may not have."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, shape: Any, stride: Any, *_rest: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor's data is."""
    if not isinstance(storage, _StorageRef):
        raise UntrustedPickleError("a tensor refers to something that is not a storage")
    try:
        ref = _TensorRef(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))
    except (TypeError, ValueError):
        raise UntrustedPickleError("a tensor has a malformed offset, shape or stride") from None
    if (
        ref.offset < 0
        or any(s < 0 for s in ref.shape)
        or any(s < 0 for s in ref.stride)
        or len(ref.shape) != len(ref.stride)
    ):
        raise UntrustedPickleError(f"a tensor has an invalid offset/shape/stride {ref.offset}/{ref.shape}/{ref.stride}")
    last = (
        ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if all(ref.shape)
        else ref.offset - 1
    )
    if last >= storage.numel:
        raise UntrustedPickleError(
            f"a tensor of shape {ref.shape} reaches past its storage of {storage.numel} elements"
        )
    return ref


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the globals of a state dict, to stand-ins; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise UntrustedPickleError(f"the file asks for {module}.{name}, which a plain state dict never needs: refused")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, root_key, location, numel, view_metadata), torch/serialization.py
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UntrustedPickleError(f"unknown persistent id in the file: {str(pid)[:80]}")
        _, storage_type, key, _location, numel, view = pid
        if view is not None:
            raise UntrustedPickleError("storage views are not supported (not written by torch >= 0.4)")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise UntrustedPickleError("a storage has a malformed key or size")
        return _StorageRef(key, storage_type.dtype, numel)


def _load_plain(stream: BinaryIO, what: str) -> Any:
    """One header pickle, which may hold only plain data (no globals at all)."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise UntrustedPickleError(f"the {what} asks for {module}.{name}: refused")

    try:
        return _NoGlobals(stream).load()
    except (pickle.UnpicklingError, EOFError) as bad:
        raise UntrustedPickleError(f"cannot read the {what}: {bad}") from None


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a legacy-format PyTorch state dict, by name, as contiguous numpy arrays.

    Raises UntrustedPickleError for a zip-format file, a file that is not a state dict, or one
    that names any global or structure a state dict does not need.
    """
    data = Path(path).read_bytes()
    if data[:4] == b"PK\x03\x04":
        raise UntrustedPickleError(f"{path} is a zip-format PyTorch file; only the legacy format is read here")
    stream = io.BytesIO(data)
    _check_header(stream, path)
    root = _read_root(stream, path)
    keys = _load_plain(stream, "storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UntrustedPickleError(f"{path}: malformed storage key list")
    storages = _read_storages(stream, path, keys, {ref.storage.key: ref.storage for ref in root.values()})
    return {name: _tensor(ref, storages[ref.storage.key]) for name, ref in root.items()}


def _check_header(stream: BinaryIO, path: Path) -> None:
    """The magic number, protocol version and system info a legacy file starts with."""
    if _load_plain(stream, "magic number") != MAGIC_NUMBER:
        raise UntrustedPickleError(f"{path} is not a legacy PyTorch file (wrong magic number)")
    if _load_plain(stream, "protocol version") != PROTOCOL_VERSION:
        raise UntrustedPickleError(f"{path}: unsupported PyTorch protocol version")
    info = _load_plain(stream, "system info")
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise UntrustedPickleError(f"{path} was written on a big-endian machine (not supported)")


def _read_root(stream: BinaryIO, path: Path) -> dict[str, _TensorRef]:
    """The state dict itself: a flat mapping of names to tensor references (nothing else is allowed)."""
    try:
        root = _StateDictUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as bad:
        raise UntrustedPickleError(f"{path}: not a state dict: {bad}") from None
    if not isinstance(root, dict) or not all(isinstance(k, str) and isinstance(v, _TensorRef) for k, v in root.items()):
        raise UntrustedPickleError(f"{path} does not hold a flat mapping of names to tensors")
    return root


def _read_storages(
    stream: BinaryIO, path: Path, keys: list[str], wanted: dict[str, _StorageRef]
) -> dict[str, np.ndarray]:
    """The raw storages, in the file's order, each checked against what the tensors expect of it."""
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = wanted.get(key)
        header = stream.read(8)
        if len(header) != 8:
            raise UntrustedPickleError(f"{path} ends before storage {key}")
        (numel,) = struct.unpack("<q", header)
        if ref is None or numel != ref.numel:
            raise UntrustedPickleError(
                f"{path}: storage {key} is unknown or its size {numel} disagrees with the tensors"
            )
        nbytes = numel * ref.dtype.itemsize
        if nbytes > MAX_STORAGE_BYTES:
            raise UntrustedPickleError(f"{path}: storage {key} claims {nbytes} bytes (more than {MAX_STORAGE_BYTES})")
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise UntrustedPickleError(f"{path} ends inside storage {key}")
        storages[key] = np.frombuffer(raw, dtype=ref.dtype)
    missing = sorted(set(wanted) - set(storages))
    if missing:
        raise UntrustedPickleError(f"{path}: storages {missing[:3]} are referenced but not in the file")
    return storages


def _tensor(ref: _TensorRef, flat: np.ndarray) -> np.ndarray:
    """One tensor's view of its storage, copied contiguous in native byte order."""
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.shape, strides=tuple(s * itemsize for s in ref.stride), writeable=False
    )
    return np.ascontiguousarray(view).astype(view.dtype.newbyteorder("="), copy=False)


__all__ = ["UntrustedPickleError", "read_state_dict"]
