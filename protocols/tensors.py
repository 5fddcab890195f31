"""Tensor tables and the canonical model hash.

The tensor table (name, shape, dtype per tensor) travels once in the envelope header, so codec
payloads can refer to tensors by their index. :func:`model_hash` identifies the weights a delta
applies to; server, client and edge device must compute it identically.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["ModelHasher", "TensorInfo", "dtype_name", "model_hash", "tensor_table"]

_HASH_DOMAIN = b"stamen-model-hash/1\x00"
_MEMO_MAX = 256  # distinct layouts (and dtypes) memoized; a long-lived process meets a handful
_DTYPE_NAMES: dict[np.dtype, str] = {}
_TABLES: dict[tuple[tuple[str, tuple[int, ...], np.dtype], ...], tuple[TensorInfo, ...]] = {}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one tensor.

    Attributes
    ----------
    name : str
        Tensor name, e.g. a ``state_dict`` key.
    shape : tuple[int, ...]
        Dimensions, each >= 0.
    dtype : str
        Numpy dtype name, e.g. ``"float32"``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @functools.cached_property
    def size(self) -> int:
        """Number of elements, ``prod(shape)`` (1 for a scalar); computed once per object."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, memoized per dtype (numpy computes the name in Python: ~2 us a call)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = dtype.name
        if len(_DTYPE_NAMES) < _MEMO_MAX:
            _DTYPE_NAMES[dtype] = name
    return name


def tensor_table(weights: Mapping[str, np.ndarray]) -> tuple[TensorInfo, ...]:
    """Describe every tensor of ``weights``, in the mapping's order.

    Tables are memoized by the tuple of ``(name, shape, dtype)``: the same layout gives the same
    (equal, and identical) table, built once.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Named arrays.

    Returns
    -------
    tuple[TensorInfo, ...]
        One entry per tensor with its name, shape and numpy dtype name.
    """
    layout, names_are_str = [], True
    for name, arr in weights.items():
        a = arr if type(arr) is np.ndarray else np.asarray(arr)
        layout.append((name, a.shape, a.dtype))
        names_are_str = names_are_str and type(name) is str  # 1 == True: no memo for odd names
    key = tuple(layout)
    table = _TABLES.get(key) if names_are_str else None
    if table is None:
        table = tuple(TensorInfo(name, shape, dtype_name(dtype)) for name, shape, dtype in key)
        if names_are_str:
            if len(_TABLES) >= _MEMO_MAX:
                _TABLES.clear()
            _TABLES[key] = table
    return table


class ModelHasher:
    """Incremental :func:`model_hash`: feed tensors one by one, their bytes in pieces.

    Lets a writer hash weights while it produces them (e.g. chunk by chunk into a file) without
    a second pass over memory. Tensors must come in strictly increasing name order and each must
    receive exactly its announced number of bytes; the result equals ``model_hash`` of the same
    tensors (a test pins this).

    Parameters
    ----------
    count : int
        Number of tensors that will be fed.
    """

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._digest = hashlib.sha256(_HASH_DOMAIN)
        self._digest.update(struct.pack("<Q", count))
        self._left, self._pending = count, 0
        self._last: str | None = None

    def begin(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        """Start the next tensor: its name, numpy dtype name and shape.

        Raises
        ------
        ValueError
            If the previous tensor is incomplete, all tensors were fed, or names are not increasing.
        """
        if self._pending or not self._left:
            raise ValueError("model hash: previous tensor incomplete or too many tensors")
        if self._last is not None and name <= self._last:
            raise ValueError(f"model hash: tensor {name!r} is not after {self._last!r} in sorted order")
        self._last, self._left = name, self._left - 1
        dt = np.dtype(dtype)
        name_bytes, dtype_bytes = name.encode("utf-8"), dt.name.encode("ascii")
        self._digest.update(struct.pack("<I", len(name_bytes)) + name_bytes)
        self._digest.update(struct.pack("<B", len(dtype_bytes)) + dtype_bytes)
        self._digest.update(struct.pack(f"<I{len(shape)}Q", len(shape), *shape))
        self._pending = math.prod(shape) * dt.itemsize
        self._digest.update(struct.pack("<Q", self._pending))

    def update(self, data: memoryview | bytes) -> None:
        """Hash the next piece of the current tensor's little-endian C-order bytes.

        Raises
        ------
        ValueError
            If the pieces exceed the tensor's size.
        """
        n = memoryview(data).nbytes
        if n > self._pending:
            raise ValueError(f"model hash: {n} bytes fed, only {self._pending} left in the tensor")
        self._pending -= n
        self._digest.update(data)

    def hexdigest(self) -> str:
        """The digest (64 lowercase hex characters) once every tensor was fed completely.

        Raises
        ------
        ValueError
            If a tensor or some bytes are missing.
        """
        if self._pending or self._left:
            raise ValueError(f"model hash: {self._left} tensors and {self._pending} bytes missing")
        return self._digest.hexdigest()


def is_model_hash(text: object) -> bool:
    """Whether ``text`` has the form of a :func:`model_hash` (64 lower-case hex digits)."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def model_hash(weights: Mapping[str, np.ndarray]) -> str:
    """Canonical SHA-256 of a set of named weights.

    The digest covers, for every tensor in sorted name order: the UTF-8 name, the dtype name,
    the shape and the C-contiguous little-endian bytes, each length-prefixed so that no two
    different models share a byte stream. It does not depend on the mapping's order, memory
    layout or byte order, and any one-ulp change, rename, reshape or dtype change alters it.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Named arrays (any numeric dtype).

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    hasher = ModelHasher(len(weights))
    for name in sorted(weights):
        arr = np.asarray(weights[name])
        hasher.begin(name, arr.dtype.name, tuple(int(d) for d in arr.shape))
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        hasher.update(little.reshape(-1).view(np.uint8).data)  # zero-copy byte view
    return hasher.hexdigest()
