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

__all__ = [
    "DTYPE_CODES",
    "MAX_NDIM",
    "Skeleton",
    "WireArray",
    "pack_arrays",
    "read_exact",
    "skeleton",
    "unpack_arrays",
    "wire_size",
]

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
_MEMO_MAX = 4096  # entry headers and dtypes memoized (one model's tensors, a few codecs)
_HEADERS: dict[tuple[str, np.dtype, tuple[int, ...]], bytes] = {}
_LITTLE: dict[np.dtype, np.dtype] = {}


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
    """Key, dtype code, ndim and dims of one entry; memoized per ``(key, dtype, shape)``."""
    memo = (key, arr.dtype, arr.shape) if type(key) is str else None
    header = _HEADERS.get(memo) if memo is not None else None
    if header is None:
        header = _new_array_header(key, arr)
        if memo is not None:
            if len(_HEADERS) >= _MEMO_MAX:
                _HEADERS.clear()
            _HEADERS[memo] = header
    return header


def _little(dtype: np.dtype) -> np.dtype:
    """``dtype.newbyteorder("<")``, memoized (a new dtype object per call otherwise)."""
    little = _LITTLE.get(dtype)
    if little is None:
        little = dtype.newbyteorder("<")
        if len(_LITTLE) < _MEMO_MAX:
            _LITTLE[dtype] = little
    return little


def _new_array_header(key: str, arr: np.ndarray) -> bytes:
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
        little = _little(arr.dtype)
        if little == arr.dtype:  # already little-endian: tobytes writes C order from any layout
            parts.append(arr.tobytes())
        else:
            parts.append(np.ascontiguousarray(arr, dtype=little).tobytes())
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


@dataclass(frozen=True)
class Skeleton:
    """A container of exactly known layout as :func:`pack_arrays` writes it, but for the arrays' data.

    Attributes
    ----------
    size : int
        Its bytes (``wire_size`` of the layout).
    pieces : tuple of (int, bytes)
        Every byte that is not array data, by offset: the count, then each entry's key, dtype code,
        ndim and dims, in canonical encoding.
    arrays : tuple of (str, numpy.dtype, tuple of int, int, int)
        Each entry's key, wire dtype, shape, data offset and element count, in order.
    """

    size: int
    pieces: tuple[tuple[int, bytes], ...]
    arrays: tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]


def skeleton(layout: Mapping[str, WireArray]) -> Skeleton | None:
    """The :class:`Skeleton` of ``layout``; None unless every entry is exact and representable."""
    pieces, arrays = [(0, _varint(len(layout)))], []
    pos = len(pieces[0][1])
    for key, entry in layout.items():
        code = DTYPE_CODES.get(entry.dtype.name)
        if code is None or not _fits(key, entry):
            return None
        head = bytes([len(key), *key.encode("ascii"), code, len(entry.shape)])
        head += b"".join(_varint(d) for d in entry.shape)
        pieces.append((pos, head))
        dtype = _CODE_TO_DTYPE[code]
        arrays.append((key, dtype, entry.shape, pos + len(head), entry.count))
        pos += len(head) + entry.count * dtype.itemsize
    return Skeleton(pos, tuple(pieces), tuple(arrays))


def _fits(key: object, entry: WireArray) -> bool:
    """An exact entry :func:`unpack_arrays` can read back: a valid key and bounded dims."""
    if not entry.exact or not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        return False
    nominal = 1
    for d in entry.shape:
        nominal *= max(d, 1)
    bounded = all(0 <= d <= _MAX_DIM for d in entry.shape)
    return bounded and len(entry.shape) <= MAX_NDIM and nominal <= _MAX_ELEMENTS


def read_exact(data: bytes | memoryview, frame: Skeleton) -> dict[str, np.ndarray] | None:
    """:func:`unpack_arrays` of ``data`` when it is exactly ``frame``'s container (every byte but
    the arrays' data as the skeleton says: same arrays, views into ``data``); None otherwise, for
    the strict reader to name what differs."""
    if len(data) != frame.size:
        return None
    for offset, piece in frame.pieces:
        if data[offset : offset + len(piece)] != piece:
            return None
    return {
        key: np.frombuffer(data, dtype, count, offset).reshape(shape)
        for key, dtype, shape, offset, count in frame.arrays
    }
