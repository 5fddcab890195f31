"""Bit-level building blocks shared by the entropy-coding stages (fedzip, compeft, rqm).

Bit streams are numpy ``uint8`` arrays of 0/1 values while they are being built or read, and
are packed MSB-first (``numpy.packbits`` big bit order) onto the wire, zero padded to a whole
byte. Readers are strict: a stream must have exactly the bytes its content needs and zero
padding, so every update has one canonical encoding, and every failure is a
:class:`~stamen.protocols.errors.MalformedUpdate`. No length read from the input can make a
reader allocate more than a small multiple of the input's own size.

Blob framing (per tensor, as a ``uint8`` container array) uses :class:`ByteWriter` /
:class:`ByteReader`: LEB128 varints, single bytes, little-endian float32 and uint64.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import MalformedUpdate

__all__ = [
    "ByteReader",
    "ByteWriter",
    "bits_to_fixed",
    "check_end",
    "codes_to_bits",
    "fixed_to_bits",
    "pack_bits",
    "unpack_bits",
    "width_for",
]

_MAX_WIDTH = 63
_CHUNK = 1 << 14  # values per step of bits_to_fixed (<= 8 MiB of temporaries at 63 bits)
_F32 = struct.Struct("<f")
_U64 = struct.Struct("<Q")


def width_for(max_value: int) -> int:
    """Bits needed to write every integer in ``0 .. max_value`` (0 for ``max_value <= 0``)."""
    return max(0, int(max_value)).bit_length()


def fixed_to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Write non-negative integers at ``width`` bits each, most significant bit first.

    Parameters
    ----------
    values : numpy.ndarray
        (n,) non-negative integers, each ``< 2**width``.
    width : int
        Bits per value, 0..63 (0 writes nothing).

    Returns
    -------
    numpy.ndarray
        (n * width,) uint8 array of 0/1.
    """
    if not 0 <= width <= _MAX_WIDTH:
        raise ValueError(f"width must be in 0..{_MAX_WIDTH}, got {width}")
    flat = np.asarray(values).reshape(-1).astype(np.uint64, copy=False)
    if width == 0 or flat.size == 0:
        return np.zeros(0, np.uint8)
    if width <= 8:  # common case (rqm levels, small gaps): one byte per value, unpack its low bits
        bits = np.unpackbits(flat.astype(np.uint8)[:, None], axis=1)  # (n, 8)
        return np.ascontiguousarray(bits[:, 8 - width :]).reshape(-1)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)  # (width,)
    return ((flat[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)


def bits_to_fixed(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    """Read ``count`` integers of ``width`` bits (MSB first) from the front of ``bits``.

    Works through ``_CHUNK`` values at a time, so that its temporaries stay a few MiB whatever
    ``count`` is: memory is the (count,) uint64 result plus O(``_CHUNK * width``).

    Raises
    ------
    MalformedUpdate
        If ``bits`` holds fewer than ``count * width`` bits.
    """
    if not 0 <= width <= _MAX_WIDTH:
        raise MalformedUpdate(f"bit width {width} not in 0..{_MAX_WIDTH}")
    need = count * width
    if count < 0 or need > bits.size:
        raise MalformedUpdate(f"bit stream too short: {count} values of {width} bits")
    out = np.zeros(count, np.uint64)
    if width == 0:
        return out
    weights = np.left_shift(np.uint64(1), np.arange(width - 1, -1, -1, dtype=np.uint64))  # (width,)
    for start in range(0, count, _CHUNK):
        stop = min(count, start + _CHUNK)
        chunk = bits[start * width : stop * width].reshape(stop - start, width)  # (chunk, width)
        if width <= 8:
            padded = np.zeros((stop - start, 8), np.uint8)
            padded[:, 8 - width :] = chunk
            out[start:stop] = np.packbits(padded, axis=1).reshape(-1)
        else:
            out[start:stop] = (chunk.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def codes_to_bits(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate variable-length codewords, each written MSB first.

    Parameters
    ----------
    codes : numpy.ndarray
        (n,) codeword values, ``codes[i] < 2**lengths[i]``.
    lengths : numpy.ndarray
        (n,) codeword lengths in bits, 0..63.

    Returns
    -------
    numpy.ndarray
        (sum(lengths),) uint8 array of 0/1.
    """
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.uint8)
    owner = np.repeat(np.arange(lens.size), lens)  # (total,) codeword of each bit
    starts = np.cumsum(lens) - lens  # (n,) first bit of each codeword
    offset = np.arange(total, dtype=np.int64) - starts[owner]  # bit index inside its codeword
    shift = (lens[owner] - 1 - offset).astype(np.uint64)
    return ((np.asarray(codes, np.uint64)[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack a 0/1 array MSB first into bytes, zero padding the last byte."""
    return np.packbits(np.asarray(bits, np.uint8)).tobytes()


def unpack_bits(data: bytes | memoryview) -> np.ndarray:
    """Unpack bytes into a (8 * len(data),) uint8 array of 0/1 (MSB first)."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def check_end(bits: np.ndarray, used: int, what: str) -> None:
    """Require that ``used`` bits fill the stream up to the last byte and the padding is zero.

    Raises
    ------
    MalformedUpdate
        If the stream has a spare byte, too few bits, or a non-zero padding bit.
    """
    if used > bits.size or bits.size - used >= 8:
        raise MalformedUpdate(f"{what}: stream has {bits.size} bits, content needs {used}")
    if bits[used:].any():
        raise MalformedUpdate(f"{what}: non-zero padding bits")


class ByteWriter:
    """Append-only builder of a small binary blob (varints, bytes, float32, uint64)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def varint(self, value: int) -> ByteWriter:
        """Unsigned LEB128."""
        out = bytearray()
        value = int(value)
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
        self.parts.append(bytes(out))
        return self

    def u8(self, value: int) -> ByteWriter:
        """One byte, 0..255."""
        self.parts.append(bytes([value]))
        return self

    def f32(self, values: np.ndarray) -> ByteWriter:
        """Little-endian float32 values."""
        self.parts.append(np.asarray(values, dtype="<f4").tobytes())
        return self

    def u64(self, value: int) -> ByteWriter:
        """One little-endian uint64."""
        self.parts.append(_U64.pack(value))
        return self

    def raw(self, data: bytes) -> ByteWriter:
        """Raw bytes."""
        self.parts.append(data)
        return self

    def array(self) -> np.ndarray:
        """The blob as a (len,) uint8 array (the container form)."""
        return np.frombuffer(b"".join(self.parts), dtype=np.uint8).copy()


class ByteReader:
    """Bounds-checked cursor over a blob; every failure is a :class:`MalformedUpdate`.

    Parameters
    ----------
    blob : numpy.ndarray
        A (len,) uint8 array from the container.
    what : str
        Names the stage and tensor in error messages.
    """

    def __init__(self, blob: np.ndarray, what: str) -> None:
        if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.ndim != 1:
            raise MalformedUpdate(f"{what}: expected a 1-D uint8 blob")
        self.data = blob.tobytes()
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedUpdate(f"{self.what}: blob truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        """One byte."""
        return self.take(1)[0]

    def varint(self, limit: int) -> int:
        """A canonical LEB128 varint no larger than ``limit``."""
        value = 0
        for shift in range(0, 70, 7):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise MalformedUpdate(f"{self.what}: non-canonical varint")
                if value > limit:
                    raise MalformedUpdate(f"{self.what}: value {value} exceeds the limit {limit}")
                return value
        raise MalformedUpdate(f"{self.what}: varint too long")

    def f32(self, count: int) -> np.ndarray:
        """``count`` little-endian float32 values as a float32 array."""
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def f32_scalar(self) -> float:
        """One little-endian float32 as a Python float."""
        return float(_F32.unpack(self.take(4))[0])

    def u64(self) -> int:
        """One little-endian uint64."""
        return int(_U64.unpack(self.take(8))[0])

    def rest(self) -> bytes:
        """Every remaining byte."""
        return self.take(len(self.data) - self.pos)
