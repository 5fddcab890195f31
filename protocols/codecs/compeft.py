"""``compeft(density=0.1, alpha=1.0)``: ComPEFT's sparse ternary compression of an update.

Yadav, Choshen, Raffel, Bansal, "ComPEFT: Compression for Communicating Parameter Efficient
Updates via Sparsification and Quantization", arXiv 2311.13171 (2023), §3; ported from the
authors' ``bert_eval.py::compress_and_update_parms`` (commit 083ed51). Over the *whole* update
``tau`` (every floating tensor, flattened and concatenated in key order, ``N`` entries):

1. keep the ``k = min(N, max(1, ceil(density * N)))`` entries of largest ``|tau|`` (global, not
   per tensor, as in the code);
2. replace each kept entry by ``alpha * sigma * sign(tau_i)``, where ``sigma = std(tau)`` is the
   standard deviation of the *dense* update before sparsification (Bessel-corrected, torch's
   ``Tensor.std`` default; population std when ``N = 1``), and zero the rest.

So the decoded update is ternary, ``{-a, 0, +a}`` with ``a = float32(alpha * sigma)``. The
original tunes ``alpha`` (``replace_factor``) on validation data; 1.0 is its default.

Wire form, one ``uint8`` array ``b.cp`` per tensor::

    varint n | varint k_b (kept in this tensor) | float32 a | u8 position header
    | bit stream: positions (see :mod:`.positions`), then k_b sign bits (1 = negative), padded

or, when smaller, header mode 3: the ``n`` trits packed five per byte (``3**5 = 243 <= 256``;
digit 0 = zero, 1 = ``+a``, 2 = ``-a``), which wins at high density. Position encodings are chosen
per tensor (``auto``: fewest bits), so at 10 % density a kept entry costs about 4.8 bits of
Golomb-Rice position plus 1 sign bit (the paper's Golomb position code + sign, §3).

Choice: the issue text summarises the scale as "alpha * std(kept values)"; the official code
uses the std of the dense update (``mean, std = tv.mean(), tv.std()`` before ``topk_values_mask``),
which is what is implemented here. ``alpha`` can absorb the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..container import WireArray
from ..errors import CodecError, MalformedUpdate
from ._keys import check_groups, decode_blob_groups, derive_layout, put_new, varint_size
from .base import Arrays, ArrayStage, Layout, Scalar, register
from .bitpack import ByteReader, ByteWriter, check_end, pack_bits, unpack_bits
from .fedzip import top_z
from .positions import decode_positions, encode_positions, position_bits
from .topk import kept_count

__all__ = ["ComPEFT", "pack_trits", "unpack_trits"]

_SUFFIX = ".cp"
_TRITS = 3  # header mode of the dense trit packing (after the three position modes)
_POW3 = np.array([81, 27, 9, 3, 1], np.int64)
_DIGITS = ((np.arange(243)[:, None] // _POW3[None, :]) % 3).astype(np.uint8)  # (243, 5) byte -> trits


def pack_trits(digits: np.ndarray) -> bytes:
    """Pack base-3 digits (0, 1, 2) five per byte, most significant first, zero padded."""
    padded = np.zeros(5 * math.ceil(digits.size / 5), np.int64)
    padded[: digits.size] = digits
    return (padded.reshape(-1, 5) @ _POW3).astype(np.uint8).tobytes()


def unpack_trits(data: bytes, count: int, what: str) -> np.ndarray:
    """Inverse of :func:`pack_trits`; exactly ``ceil(count / 5)`` bytes, each < 243, zero padding."""
    raw = np.frombuffer(data, np.uint8)
    if raw.size != math.ceil(count / 5) or (raw.size and int(raw.max()) >= 243):
        raise MalformedUpdate(f"{what}: bad trit packing")
    flat = _DIGITS[raw].reshape(-1)  # (5 * bytes,) uint8: one table lookup per byte
    if flat[count:].any():
        raise MalformedUpdate(f"{what}: non-zero trit padding")
    return flat[:count]


def _global_selection(arrays: Arrays, keys: list[str], density: float) -> tuple[dict[str, np.ndarray], float]:
    """Per-tensor kept flat indices of the global top-k, and ``sigma = std(tau)``."""
    flats = [arrays[k].reshape(-1).astype(np.float32, copy=False) for k in keys]
    tau = np.concatenate(flats) if flats else np.zeros(0, np.float32)  # (N,)
    if not np.isfinite(tau).all():
        raise CodecError("compeft: update has non-finite values")
    if tau.size == 0:
        return {k: np.zeros(0, np.int64) for k in keys}, 0.0
    sigma = float(np.std(tau.astype(np.float64), ddof=1 if tau.size > 1 else 0))
    chosen = top_z(tau, kept_count(density, tau.size))  # sorted global indices
    bounds = np.cumsum([0] + [f.size for f in flats])
    cut = np.searchsorted(chosen, bounds)
    return {k: chosen[cut[i] : cut[i + 1]] - bounds[i] for i, k in enumerate(keys)}, sigma


@register
class ComPEFT(ArrayStage):
    """Global top-k, then ternary ``alpha * std(update) * sign``.

    Parameters
    ----------
    density : float, default 0.1
        Fraction of all entries kept, in (0, 1].
    alpha : float, default 1.0
        Scale factor on the dense update's std, > 0 (ComPEFT's ``replace_factor``).
    """

    name = "compeft"
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({"density": 0.1, "alpha": 1.0})

    @classmethod
    def check_params(cls, params: Mapping[str, Scalar]) -> None:
        """``density`` in (0, 1]; ``alpha`` in (0, 1e6]."""
        if not 0.0 < float(params["density"]) <= 1.0:
            raise CodecError(f"codec stage 'compeft' param 'density': {params['density']!r} not in (0, 1]")
        if not 0.0 < float(params["alpha"]) <= 1e6:
            raise CodecError(f"codec stage 'compeft' param 'alpha': {params['alpha']!r} not in (0, 1e6]")

    @staticmethod
    def _blob(flat: np.ndarray, idx: np.ndarray, scale: np.float32) -> np.ndarray:
        n, k = flat.size, idx.size
        writer = ByteWriter().varint(n).varint(k).f32(np.array([scale]))
        negative = (flat[idx] < 0).astype(np.uint8)  # (k,)
        costs = position_bits(idx, n)
        if n and 8 * math.ceil(n / 5) < min(c for c, _ in costs.values()) + k:
            digits = np.zeros(n, np.int64)
            digits[idx] = 1 + negative
            return writer.u8(_TRITS << 6).raw(pack_trits(digits)).array()
        header, stream = encode_positions(idx, n, "auto")
        return writer.u8(header).raw(pack_bits(np.concatenate([stream, negative]))).array()

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace each floating array ``b`` by the blob ``b.cp``; others pass through.

        Raises
        ------
        CodecError
            If the update has non-finite values.
        """
        keys = [k for k, a in arrays.items() if a.dtype.kind == "f"]
        kept, sigma = _global_selection(arrays, keys, float(self.params["density"]))
        scale = np.float32(float(self.params["alpha"]) * sigma)
        out: Arrays = {}
        for key, arr in arrays.items():
            if key in kept:
                put_new(out, key + _SUFFIX, self._blob(arr.reshape(-1), kept[key], scale), self.name)
            else:
                put_new(out, key, arr, self.name)
        check_groups(self.name, out, keys, (_SUFFIX,))
        return out

    @staticmethod
    def blob_bound(n: int) -> int:
        """Most bytes the blob of an ``n``-element tensor can take: ``varint n``, ``varint k``,
        the scale, the header, then ``ceil(n / 5)`` (the encoder writes positions and signs only
        when they take no more bits than the trit packing)."""
        return 2 * varint_size(n) + 5 + math.ceil(n / 5)

    def encoded_layout(self, layout: Layout) -> Layout:
        """Each floating ``b`` becomes one uint8 blob ``b.cp`` (bounded, data-dependent size)."""

        def blob(key: str, w: WireArray) -> Layout:
            return {key + _SUFFIX: WireArray(np.dtype(np.uint8), (self.blob_bound(w.count),), exact=False)}

        return derive_layout(layout, blob)

    @staticmethod
    def _decode_one(key: str, blob: np.ndarray, budget: int) -> np.ndarray:
        what = f"compeft: {key!r}"
        reader = ByteReader(blob, what)
        n = reader.varint(budget)
        k = reader.varint(n)
        scale = np.float32(reader.f32_scalar())
        if not (np.isfinite(scale) and scale >= 0):
            raise MalformedUpdate(f"{what}: scale must be finite and >= 0")
        header = reader.u8()
        dense = np.zeros(n, np.float32)  # (n,)
        if header >> 6 == _TRITS:
            digits = unpack_trits(reader.rest(), n, what) if header == _TRITS << 6 else None
            if digits is None or int(np.count_nonzero(digits)) != k:
                raise MalformedUpdate(f"{what}: trit header or kept count mismatch")
            dense[digits == 1], dense[digits == 2] = scale, -scale
            return dense
        bits = unpack_bits(reader.rest())
        idx, pos = decode_positions(bits, 0, k, n, header, what)
        if bits.size < pos + k:
            raise MalformedUpdate(f"{what}: sign bits truncated")
        signs = bits[pos : pos + k]
        check_end(bits, pos + k, what)
        dense[idx] = np.where(signs == 1, -scale, scale)
        return dense

    def decode(self, arrays: Arrays) -> Arrays:
        """Rebuild every ``b.cp`` blob into the dense float32 ternary tensor ``b`` (1-D).

        Raises
        ------
        MalformedUpdate
            For a truncated blob, a bad header or packing, a negative or non-finite scale,
            out-of-range positions, or tensors larger than ``max_elements``.
        """
        return decode_blob_groups(arrays, _SUFFIX, self._decode_one, self.max_elements, self.name)
