"""Compact binary container for a dict of named numpy arrays (the codec pipeline's wire form).

Layout (all integers unsigned; ``varint`` is LEB128, at most 10 bytes)::

    count                       varint    number of arrays
    per array, in dict order:
      key_len                   u8        1..255
      key                       ASCII     printable, no spaces
      dtype code                u8        see ``DTYPE_CODES``
      ndim                      u8        0..MAX_NDIM
      dims                      varint    each < 2**32, product of max(dim, 1) <= 2**40
      data                      raw little-endian, C order, prod(dims) * itemsize bytes

Reading is strict and bounded: no length field can make the reader allocate more than the bytes
that remain in the input, duplicate keys and trailing bytes are rejected, and every failure is a
:class:`~stamen.protocols.errors.MalformedUpdate`. Arrays returned by :func:`unpack_arrays` are
read-only views into the input bytes (zero copy).

:class:`WireArray` describes an array *before* it is encoded (its dtype and shape, exactly or as
an upper bound); :func:`wire_size` gives the container size such arrays take, so a receiver knows
how many bytes a payload may decompress to before it decompresses anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import CodecError, MalformedUpdate

__all__ = ["DTYPE_CODES", "MAX_NDIM", "WireArray", "pack_arrays", "unpack_arrays", "wire_size"]

#: Wire code of every dtype the container carries. Codes are append-only (never renumber).
DTYPE_CODES: Mapping[str, int] = {
    "bool": 1,
    "int8": 2,
    "uint8": 3,
    "int16": 4,
    "uint16": 5,
    "int32": 6,
    "uint32": 7,
    "int64": 8,
    "uint64": 9,
    "float16": 10,
    "float32": 11,
    "float64": 12,
}
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    code: np.dtype(name).newbyteorder("<") for name, code in DTYPE_CODES.items()
}
MAX_NDIM = 16
_MAX_DIM = 2**32 - 1
_MAX_ELEMENTS = 2**40
_KEY_RE = re.compile(r"[!-~]{1,255}")  # printable ASCII without space


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass(frozen=True)
class WireArray:
    """What one container entry will hold: its dtype and its shape, exactly or as a bound.

    Attributes
    ----------
    dtype : numpy.dtype
        The entry's dtype.
    shape : tuple[int, ...]
        The exact dimensions, or (``exact=False``) an upper bound of each dimension; the
        number of dimensions is always exact.
    exact : bool, default True
        False when the entry's size depends on the data, or the entry may be absent.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    exact: bool = True

    @property
    def count(self) -> int:
        """Elements, ``prod(shape)`` (an upper bound when not exact)."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def bound(self) -> WireArray:
        """The same entry marked as an upper bound."""
        return WireArray(self.dtype, self.shape, exact=False)


def wire_size(layout: Mapping[str, WireArray]) -> tuple[int, bool]:
    """Bytes of the container holding ``layout``, and whether that size is exact.

    Parameters
    ----------
    layout : Mapping[str, WireArray]
        Every entry the container may hold (inexact entries may be smaller or absent).

    Returns
    -------
    tuple[int, bool]
        The exact size when every entry is exact, else an upper bound (dimensions below
        ``2**32`` take at most 5 varint bytes); and the exactness flag.
    """
    total = len(_varint(len(layout)))
    for key, entry in layout.items():
        dims = sum(len(_varint(d)) for d in entry.shape)
        total += 3 + len(key) + dims + entry.count * entry.dtype.itemsize
    return total, all(entry.exact for entry in layout.values())


def _array_header(key: str, arr: np.ndarray) -> bytes:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise CodecError(f"container key {key!r} must be 1..255 printable ASCII characters")
    code = DTYPE_CODES.get(arr.dtype.name)
    if code is None or arr.dtype.kind not in "biuf":
        raise CodecError(f"container cannot carry dtype {arr.dtype} (key {key!r})")
    if arr.ndim > MAX_NDIM or any(d > _MAX_DIM for d in arr.shape):
        raise CodecError(f"container cannot carry shape {arr.shape} (key {key!r})")
    dims = b"".join(_varint(int(d)) for d in arr.shape)
    return bytes([len(key)]) + key.encode("ascii") + bytes([code, arr.ndim]) + dims


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named arrays into the container format.

    Parameters
    ----------
    arrays : Mapping[str, numpy.ndarray]
        Keys are 1..255 printable ASCII characters; dtypes must be in ``DTYPE_CODES``.

    Returns
    -------
    bytes
        The container; arrays appear in the mapping's order.

    Raises
    ------
    CodecError
        If a key, dtype or shape cannot be represented.
    """
    parts = [_varint(len(arrays))]
    for key, arr in arrays.items():
        parts.append(_array_header(key, arr))
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        parts.append(little.tobytes())
    return b"".join(parts)


class _Reader:
    """Bounds-checked cursor over the input bytes."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise MalformedUpdate(f"container truncated reading {what} ({n} > {self.remaining})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return int(self.take(1, what)[0])

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise MalformedUpdate(f"non-canonical varint in {what}")
                return value
        raise MalformedUpdate(f"varint too long in {what}")


def _read_array(reader: _Reader) -> tuple[str, np.ndarray]:
    key_bytes = bytes(reader.take(reader.u8("key length"), "key"))
    try:
        key = key_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedUpdate("container key is not ASCII") from None
    if not _KEY_RE.fullmatch(key):
        raise MalformedUpdate(f"container key {key!r} is not printable ASCII")
    dtype = _CODE_TO_DTYPE.get(reader.u8("dtype"))
    if dtype is None:
        raise MalformedUpdate(f"unknown dtype code for key {key!r}")
    ndim = reader.u8("ndim")
    if ndim > MAX_NDIM:
        raise MalformedUpdate(f"ndim {ndim} > {MAX_NDIM} for key {key!r}")
    dims = tuple(reader.varint("dims") for _ in range(ndim))
    count, nominal = 1, 1
    for d in dims:
        count *= d
        nominal *= max(d, 1)  # numpy refuses even empty arrays whose nominal size is huge
    if nominal > _MAX_ELEMENTS:
        raise MalformedUpdate(f"shape {dims} too large for key {key!r}")
    nbytes = count * dtype.itemsize  # exact Python int: bounded below by remaining input
    raw = reader.take(nbytes, f"data of {key!r}")
    return key, np.frombuffer(raw, dtype=dtype).reshape(dims)


def unpack_arrays(data: bytes | memoryview) -> dict[str, np.ndarray]:
    """Parse a container produced by :func:`pack_arrays`.

    Parameters
    ----------
    data : bytes or memoryview
        The container bytes (not copied: the arrays are views into them).

    Returns
    -------
    dict[str, numpy.ndarray]
        Read-only little-endian arrays, in container order.

    Raises
    ------
    MalformedUpdate
        On truncation, bad codes, oversized fields, duplicate keys or trailing bytes.
    """
    reader = _Reader(data)
    count = reader.varint("count")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):  # each entry consumes >= 4 bytes, so this loop is input-bounded
        key, arr = _read_array(reader)
        if key in out:
            raise MalformedUpdate(f"duplicate container key {key!r}")
        out[key] = arr
    if reader.remaining:
        raise MalformedUpdate(f"{reader.remaining} trailing bytes after container")
    return out
