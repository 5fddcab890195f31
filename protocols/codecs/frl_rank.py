"""``frl_rank``: FRL edge rankings packed at ``ceil(log2 n)`` bits per index; zero tensors in O(1).

The ``frl`` trainer's update holds, per score tensor of ``n`` edges, a ranking (a permutation of
``0..n-1`` stored as float32) and zeros for every frozen tensor. Per floating array ``b`` this
stage sends two arrays:

- ``b.s``: the shape, uint32 (uint64 if a dimension needs it);
- ``b.p``: uint8, the ranking's indices as ``w = ceil(log2 n)`` bit little-endian fields packed
  LSB-first (``numpy.packbits(bitorder="little")``), ``ceil(n * w / 8)`` bytes, padding bits 0;
  **empty** for an all-zero tensor (any ``n``), so a frozen tensor costs a few bytes.

A one-element tensor's only ranking ``[0]`` is also all-zero; both encodings decode to ``[0]``.
Anything else (a tensor that is neither all-zero nor a permutation of its indices) is refused
at encode time with :class:`CodecError`. Decode is hostile-input safe: it checks dtypes, the
exact packed length, zero padding and the element budget before allocating, and raises
:class:`CodecError` unless the unpacked indices form a permutation.

Wire size per ranking: ``n * ceil(log2 n) / 8`` bytes versus ``4 n`` for float32 (FRL paper,
Section 6 "communication cost"; e.g. 13 bits instead of 32 for a 5,120-edge layer).
"""

from __future__ import annotations

import math

import numpy as np

from ..container import WireArray
from ..errors import CodecError
from ._keys import derive_layout, find_groups, put_new, split_arrays
from .base import Arrays, ArrayStage, Layout, register

__all__ = ["FRLRank", "index_bits", "pack_indices", "unpack_indices"]

_SUFFIXES = (".p", ".s")
_MAX_NDIM = 16
_MAX_EXACT = 2**24  # float32 holds every integer up to here
_CHUNK = 2**16  # indices per packing chunk (multiple of 8)


def index_bits(n: int) -> int:
    """``ceil(log2 n)`` bits per index of an ``n``-element ranking (0 for ``n <= 1``)."""
    return max(n - 1, 0).bit_length()


def pack_indices(idx: np.ndarray, width: int) -> np.ndarray:
    """Pack non-negative integers ``< 2**width`` into ``width``-bit LSB-first fields, uint8.

    Works in chunks of ``_CHUNK`` indices (a multiple of 8, so every chunk ends on a byte) to keep
    the temporary bit matrix small.
    """
    if width == 0 or idx.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width, dtype=np.uint32)
    parts = []
    for start in range(0, idx.size, _CHUNK):
        chunk = idx[start : start + _CHUNK].astype(np.uint32)
        bits = ((chunk[:, None] >> shifts) & np.uint32(1)).astype(np.uint8)  # (chunk, w)
        parts.append(np.packbits(bits.reshape(-1), bitorder="little"))
    return np.concatenate(parts)


def unpack_indices(packed: np.ndarray, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_indices` for ``n`` fields of ``width`` bits; int64 ``(n,)``."""
    out = np.zeros(n, dtype=np.int64)
    if width == 0:
        return out
    weights = np.left_shift(np.uint32(1), np.arange(width, dtype=np.uint32))  # (w,)
    step = _CHUNK * width // 8  # bytes per full chunk
    for c, start in enumerate(range(0, n, _CHUNK)):
        count = min(_CHUNK, n - start)
        raw = packed[c * step : c * step + (count * width + 7) // 8]
        bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
        out[start : start + count] = bits.astype(np.uint32) @ weights
    return out


def _is_permutation(idx: np.ndarray, n: int) -> bool:
    if idx.size != n or (n and (int(idx.min()) < 0 or int(idx.max()) >= n)):
        return False
    seen = np.zeros(n, dtype=bool)
    seen[idx] = True
    return bool(seen.all())


def _shape_dtype(shape: tuple[int, ...]) -> np.dtype:
    return np.dtype(np.uint64 if any(d >= 2**32 for d in shape) else np.uint32)


@register
class FRLRank(ArrayStage):
    """Bit-packed FRL rankings (no params). Non-float arrays pass through."""

    name = "frl_rank"

    def _encode_one(self, key: str, arr: np.ndarray) -> np.ndarray:
        flat = arr.reshape(-1)
        n = flat.size
        if not np.any(flat):
            return np.zeros(0, dtype=np.uint8)
        if n > _MAX_EXACT:
            raise CodecError(f"frl_rank: tensor {key!r} has {n} > 2**24 elements; float32 indices inexact")
        if not np.all(np.isfinite(flat)) or np.any(flat != np.rint(flat)):
            raise CodecError(f"frl_rank: tensor {key!r} is neither all-zero nor a ranking")
        idx = flat.astype(np.int64)
        if not _is_permutation(idx, n):
            raise CodecError(f"frl_rank: tensor {key!r} is neither all-zero nor a permutation of 0..{n - 1}")
        return pack_indices(idx, index_bits(n))

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace each floating array ``b`` by ``b.p`` (packed ranking) and ``b.s`` (shape)."""

        def split(key: str, arr: np.ndarray) -> dict[str, np.ndarray]:
            return {
                ".p": self._encode_one(key, arr),
                ".s": np.array(arr.shape, dtype=_shape_dtype(arr.shape)),
            }

        return split_arrays(arrays, self.name, _SUFFIXES, split)

    def encoded_layout(self, layout: Layout) -> Layout:
        """Each floating ``b`` of ``n`` elements becomes ``b.p`` (empty, or ``ceil(n w / 8)``
        bytes: bounded) and ``b.s`` (its shape, exact)."""

        def packed(key: str, w: WireArray) -> Layout:
            n = w.count
            return {
                key + ".p": WireArray(np.dtype(np.uint8), ((n * index_bits(n) + 7) // 8,), exact=False),
                key + ".s": WireArray(_shape_dtype(w.shape), (len(w.shape),)),
            }

        return derive_layout(layout, packed)

    def _decode_one(self, key: str, packed: np.ndarray, shape: np.ndarray, budget: int) -> np.ndarray:
        if shape.dtype not in (np.uint32, np.uint64) or shape.ndim != 1 or shape.size > _MAX_NDIM:
            raise CodecError(f"frl_rank: bad shape array for {key!r}")
        dims = tuple(int(d) for d in shape)
        n = math.prod(dims)
        if n > budget:  # before allocating: a tiny payload cannot claim a huge tensor
            raise CodecError(f"frl_rank: tensor {key!r} of {n} elements exceeds the limit")
        if packed.dtype != np.uint8 or packed.ndim != 1:
            raise CodecError(f"frl_rank: packed ranking of {key!r} must be 1-D uint8")
        if packed.size == 0:
            return np.zeros(dims, dtype=np.float32)
        if n > _MAX_EXACT:
            raise CodecError(f"frl_rank: ranking {key!r} of {n} > 2**24 elements")
        width = index_bits(n)
        total_bits = n * width
        if packed.size != (total_bits + 7) // 8:
            raise CodecError(f"frl_rank: {key!r} needs {(total_bits + 7) // 8} bytes, got {packed.size}")
        if total_bits % 8 and int(packed[-1]) >> (total_bits % 8):
            raise CodecError(f"frl_rank: nonzero padding bits in {key!r}")
        idx = unpack_indices(packed, n, width)
        if not _is_permutation(idx, n):
            raise CodecError(f"frl_rank: {key!r} is not a permutation of 0..{n - 1}")
        return idx.astype(np.float32).reshape(dims)

    def decode(self, arrays: Arrays) -> Arrays:
        """Unpack every ``b.p``/``b.s`` pair into a float32 array ``b``.

        Raises
        ------
        CodecError
            For wrong dtypes or lengths, nonzero padding, a tensor over the element budget, or
            indices that are not a permutation.
        """
        groups = find_groups(arrays, _SUFFIXES)
        consumed = {base + s for base in groups for s in _SUFFIXES}
        out: Arrays = {k: a for k, a in arrays.items() if k not in consumed}
        budget = self.max_elements
        for base in groups:
            dense = self._decode_one(base, arrays[base + ".p"], arrays[base + ".s"], budget)
            budget -= dense.size
            put_new(out, base, dense, self.name)
        return out
