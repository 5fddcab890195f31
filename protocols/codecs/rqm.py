"""``rqm(c=0.1, delta=0.1, m=16, q=0.5)``: the Randomized Quantization Mechanism.

Youn, Hu, Ziani, Abernethy, "Randomized Quantization is All You Need for Differential Privacy
in Federated Learning", FL-ICML workshop 2023 (arXiv 2306.11913), Algorithm 2. Per coordinate
``x`` of every floating tensor, with ``X = c + delta``:

1. clip ``x`` to ``[-c, c]``;
2. levels ``B(i) = -X + 2 i X / (m - 1)``, ``i = 0 .. m-1`` (``m`` evenly spaced on ``[-X, X]``);
3. keep the end levels 0 and ``m - 1`` and every interior level independently with
   probability ``q`` (a fresh keep pattern per coordinate);
4. with ``a < b`` the kept levels next to ``x`` (``B(a) <= x <= B(b)``), send ``z = b`` with
   probability ``(x - B(a)) / (B(b) - B(a))``, else ``z = a`` (unbiased randomized rounding);
5. the receiver outputs ``B(z)``: ``E[B(z)] = clip(x)`` for every keep pattern.

Only the levels next to ``x`` matter, so the keep pattern is sampled lazily and exactly: with
``l`` the grid index below ``x`` (``B(l) <= x < B(l + 1)``), the number of dropped levels
walking down from ``l`` (and up from ``l + 1``) before a kept one is geometric,
``G ~ Geom(q)`` on ``{0, 1, ...}``, cut at the always-kept end levels; that is the same law as
drawing all ``m - 2`` Bernoullis, at O(1) work per coordinate.

Privacy: the mechanism alone is (alpha, eps(alpha))-Renyi DP per coordinate, computed exactly
by :mod:`stamen.server.privacy.rqm_rdp` (``delta > 0`` and ``q < 1`` make it finite). It is
also the codec: ``z`` travels at ``ceil(log2 m)`` bits, one ``uint8`` blob ``b.rq`` per tensor
(``varint n``, then the bit-packed indices, zero padded). Non-finite input is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..container import WireArray
from ..errors import CodecError, MalformedUpdate
from ._keys import decode_blob_groups, derive_layout, split_arrays, varint_size
from .base import Arrays, ArrayStage, Layout, Scalar, register
from .bitpack import ByteReader, ByteWriter, bits_to_fixed, check_end, fixed_to_bits, pack_bits, unpack_bits

__all__ = ["MAX_LEVELS", "Rqm", "levels", "quantize"]

_SUFFIX = ".rq"
MAX_LEVELS = 256
_CHUNK = 1 << 16  # level indices decoded per step


def levels(c: float, delta: float, m: int) -> np.ndarray:
    """(m,) float64 levels ``B(i) = -X + 2 i X / (m - 1)``, ``X = c + delta``."""
    x_max = c + delta
    return -x_max + 2.0 * np.arange(m) * x_max / (m - 1)


def _neighbour_offsets(rng: np.random.Generator, q: float, size: int) -> np.ndarray:
    """(size,) dropped levels before the first kept one: ``G ~ Geom(q)`` on ``{0, 1, ...}``.

    Inverse CDF, ``G = floor(log U / log(1 - q))`` with ``U`` in (0, 1], so ``P(G >= g) =
    (1 - q)^g``; capped at ``MAX_LEVELS`` (the end levels stop the walk anyway), which keeps tiny
    ``q`` from overflowing.
    """
    if q <= 0.0:
        return np.full(size, MAX_LEVELS, np.int64)
    u = 1.0 - rng.random(size)  # (size,) in (0, 1]
    with np.errstate(divide="ignore", over="ignore"):  # q = 1: log(1 - q) = -inf; tiny q: huge g
        g = np.floor(np.log(u) / np.log1p(-q))
    return np.minimum(g, MAX_LEVELS).astype(np.int64)


def quantize(x: np.ndarray, c: float, delta: float, m: int, q: float, rng: np.random.Generator) -> np.ndarray:
    """Level indices ``z`` of RQM for the values ``x`` (any shape; returns the same shape).

    Parameters
    ----------
    x : numpy.ndarray
        Finite values; clipped to ``[-c, c]``.
    c, delta : float
        Clip bound ``c > 0`` and extension ``delta > 0`` of the level range ``[-(c+delta), c+delta]``.
    m : int
        Number of levels, 2..256.
    q : float
        Keep probability of each interior level, in [0, 1].
    rng : numpy.random.Generator
        Source of the keep patterns and the rounding.

    Returns
    -------
    numpy.ndarray
        uint8 or uint16 indices in ``0 .. m-1``.
    """
    grid = levels(c, delta, m)
    v = np.clip(x.astype(np.float64).reshape(-1), -c, c)  # (n,)
    step = 2.0 * (c + delta) / (m - 1)
    low = np.clip(np.floor((v - grid[0]) / step).astype(np.int64), 0, m - 2)  # B(low) <= v < B(low+1)
    a = np.maximum(low - _neighbour_offsets(rng, q, v.size), 0)
    b = np.minimum(low + 1 + _neighbour_offsets(rng, q, v.size), m - 1)
    up = (v - grid[a]) / (grid[b] - grid[a])  # in [0, 1]
    z = np.where(rng.random(v.size) < up, b, a)
    return z.astype(np.uint8 if m <= 256 else np.uint16).reshape(x.shape)


@register
class Rqm(ArrayStage):
    """Randomized Quantization Mechanism (codec and local DP mechanism).

    Parameters
    ----------
    c : float, default 0.1
        Per-coordinate clip bound, > 0 (units of the update).
    delta : float, default 0.1
        Extension of the level range beyond ``c``, > 0 (the privacy comes from it and ``q``).
    m : int, default 16
        Number of levels, 2..256 (``ceil(log2 m)`` bits per coordinate).
    q : float, default 0.5
        Keep probability of each interior level, in [0, 1].
    """

    name = "rqm"
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({"c": 0.1, "delta": 0.1, "m": 16, "q": 0.5})

    @classmethod
    def check_params(cls, params: Mapping[str, Scalar]) -> None:
        """``c > 0``, ``delta > 0``, ``2 <= m <= 256``, ``0 <= q <= 1``."""
        for key in ("c", "delta"):
            if not 0.0 < float(params[key]) <= 1e30:
                raise CodecError(f"codec stage 'rqm' param {key!r}: {params[key]!r} not in (0, 1e30]")
        if not 2 <= int(params["m"]) <= MAX_LEVELS:
            raise CodecError(f"codec stage 'rqm' param 'm': {params['m']!r} not in 2..{MAX_LEVELS}")
        if not 0.0 <= float(params["q"]) <= 1.0:
            raise CodecError(f"codec stage 'rqm' param 'q': {params['q']!r} not in [0, 1]")

    @property
    def width(self) -> int:
        """Bits per coordinate, ``ceil(log2 m)``."""
        return math.ceil(math.log2(int(self.params["m"])))

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace each floating array ``b`` by the blob ``b.rq``; others pass through.

        Raises
        ------
        CodecError
            If a tensor has non-finite values.
        """
        p = self.params

        def split(key: str, arr: np.ndarray) -> dict[str, np.ndarray]:
            if not np.isfinite(arr).all():
                raise CodecError(f"rqm: tensor {key!r} has non-finite values")
            z = quantize(arr, float(p["c"]), float(p["delta"]), int(p["m"]), float(p["q"]), rng)
            blob = ByteWriter().varint(arr.size).raw(pack_bits(fixed_to_bits(z, self.width)))
            return {_SUFFIX: blob.array()}

        return split_arrays(arrays, self.name, (_SUFFIX,), split)

    def encoded_layout(self, layout: Layout) -> Layout:
        """Each floating ``b`` of ``n`` elements becomes the blob ``b.rq``: ``varint n`` and
        ``ceil(n * width / 8)`` bytes of level indices (exact)."""

        def blob(key: str, w: WireArray) -> Layout:
            size = varint_size(w.count) + math.ceil(w.count * self.width / 8)
            return {key + _SUFFIX: WireArray(np.dtype(np.uint8), (size,))}

        return derive_layout(layout, blob)

    def _decode_one(self, key: str, blob: np.ndarray, budget: int) -> np.ndarray:
        what = f"rqm: {key!r}"
        reader = ByteReader(blob, what)
        n, width = reader.varint(budget), self.width
        bits = unpack_bits(reader.rest())
        check_end(bits, n * width, what)
        m = int(self.params["m"])
        grid = levels(float(self.params["c"]), float(self.params["delta"]), m).astype(np.float32)
        out = np.empty(n, np.float32)  # (n,); indices are read a chunk at a time
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            z = bits_to_fixed(bits[start * width : stop * width], width, stop - start)
            if int(z.max()) >= m:
                raise MalformedUpdate(f"{what}: level index >= m = {m}")
            out[start:stop] = grid[z]
        return out

    def decode(self, arrays: Arrays) -> Arrays:
        """Dequantize every ``b.rq`` blob: ``B(z)`` as float32 (1-D).

        Raises
        ------
        MalformedUpdate
            For a truncated blob, wrong length or padding, an index >= m, or tensors larger
            than ``max_elements``.
        """
        return decode_blob_groups(arrays, _SUFFIX, self._decode_one, self.max_elements, self.name)
