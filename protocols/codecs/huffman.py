"""Canonical Huffman coding of small alphabets (FedZip's cluster ids).

Huffman (1952), "A Method for the Construction of Minimum-Redundancy Codes". The code lengths
come from the usual two-smallest merge with deterministic tie-breaking (by weight, then by the
order in which nodes were created; leaves first, by symbol). Only the lengths travel: the codes
are the *canonical* ones (Schwartz & Kallick 1964; DEFLATE, RFC 1951 §3.2.2), assigned in order
of (length, symbol), so the receiver rebuilds them from the lengths alone.

Unlike the original FedZip code, which charges lengths ``[2, 1, 1]`` to three clusters (Kraft
sum 1.25 > 1: no prefix code has those lengths), these lengths always satisfy Kraft's
inequality ``sum 2**-l <= 1``; :func:`check_lengths` refuses any that do not. A symbol with
count 0 gets no code (length 0); a lone used symbol gets the 1-bit code ``0``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from ..errors import MalformedUpdate
from .bitpack import codes_to_bits

__all__ = [
    "MAX_CODE_LENGTH",
    "MAX_SYMBOLS",
    "canonical_codes",
    "check_lengths",
    "decode",
    "encode",
    "huffman_lengths",
]

#: Largest alphabet supported; with 16 symbols no Huffman code is longer than 15 bits.
MAX_SYMBOLS = 16
MAX_CODE_LENGTH = 15
_CHUNK = 1 << 16  # bit positions whose windows are decoded per step


def huffman_lengths(counts: Sequence[int]) -> np.ndarray:
    """Optimal prefix-code lengths for symbol ``counts`` (0 for unused symbols).

    Parameters
    ----------
    counts : Sequence[int]
        Occurrences of each symbol, ``1 <= len(counts) <= 16``, each >= 0.

    Returns
    -------
    numpy.ndarray
        (len(counts),) uint8 lengths; ``sum(counts * lengths)`` is minimal among prefix codes.
    """
    k = len(counts)
    if not 1 <= k <= MAX_SYMBOLS:
        raise ValueError(f"alphabet size must be in 1..{MAX_SYMBOLS}, got {k}")
    lengths = np.zeros(k, np.uint8)
    used = [s for s in range(k) if counts[s] > 0]
    if len(used) == 1:
        lengths[used[0]] = 1
    if len(used) <= 1:
        return lengths
    heap: list[tuple[int, int, list[int]]] = [(int(counts[s]), s, [s]) for s in used]
    heapq.heapify(heap)
    order = k
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every leaf under the merged node goes one level deeper
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, order, s1 + s2))
        order += 1
    return lengths


def check_lengths(lengths: np.ndarray, what: str) -> None:
    """Refuse lengths that are out of range or violate Kraft's inequality.

    Raises
    ------
    MalformedUpdate
        If a length exceeds 15, no symbol has a code, or ``sum 2**-l > 1``.
    """
    lens = [int(v) for v in lengths]
    if any(v > MAX_CODE_LENGTH for v in lens):
        raise MalformedUpdate(f"{what}: Huffman code length above {MAX_CODE_LENGTH}")
    if not any(lens):
        raise MalformedUpdate(f"{what}: Huffman code has no symbols")
    if sum(1 << (MAX_CODE_LENGTH - v) for v in lens if v) > 1 << MAX_CODE_LENGTH:
        raise MalformedUpdate(f"{what}: Huffman lengths violate Kraft's inequality")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords for ``lengths`` (valid per :func:`check_lengths`).

    Codes are assigned in increasing (length, symbol) order: each code is the previous one plus
    one, shifted left by the length increase. Unused symbols get code 0 (never written).
    """
    codes = np.zeros(len(lengths), np.uint64)
    code, prev = 0, 0
    for sym in sorted((s for s in range(len(lengths)) if lengths[s]), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev
        prev = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Huffman-code ``symbols`` (each with a non-zero length) into a 0/1 bit array."""
    codes = canonical_codes(lengths)
    syms = np.asarray(symbols, dtype=np.intp)
    return codes_to_bits(codes[syms], np.asarray(lengths, np.int64)[syms])


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """``symbol << 4 | length`` for every ``L``-bit window, ``L`` the longest code (0: no code)."""
    width = int(max(lengths))
    table = np.zeros(1 << width, np.uint8)
    codes = canonical_codes(lengths)
    for sym, (code, length) in enumerate(zip(codes.tolist(), lengths.tolist(), strict=True)):
        if length:
            lo = int(code) << (width - length)
            table[lo : lo + (1 << (width - length))] = sym << 4 | length
    return table, width


def _entries(bits: np.ndarray, lo: int, hi: int, end: int, table: np.ndarray, width: int) -> bytes:
    """``symbol << 4 | length`` for every bit position in ``[lo, hi)``: one table lookup on the
    ``width``-bit window there, bits at or past ``end`` read as zeros."""
    seg = bits[lo : min(hi + width - 1, end)].astype(np.uint16)
    padded = np.zeros(hi - lo + width - 1, np.uint16)
    padded[: seg.size] = seg
    window: np.ndarray = np.zeros(hi - lo, np.uint16)
    for t in range(width):
        window = (window << 1) | padded[t : t + hi - lo]
    return table[window].tobytes()


def decode(
    bits: np.ndarray, start: int, count: int, lengths: np.ndarray, what: str
) -> tuple[np.ndarray, int]:
    """Decode ``count`` symbols from ``bits[start:]``.

    Every bit position gets its (symbol, length) by one table lookup on the ``L``-bit window
    that starts there (vectorized, ``_CHUNK`` positions at a time); a short Python loop then
    hops from codeword to codeword. Work is bounded by ``count * L`` bits, whatever the
    stream's length, and memory by O(``count + _CHUNK``).

    Returns
    -------
    tuple[numpy.ndarray, int]
        The (count,) int64 symbols and the bit position just after the last codeword.

    Raises
    ------
    MalformedUpdate
        If the lengths are invalid, a window matches no codeword, or the stream ends early.
    """
    check_lengths(lengths, what)
    if count == 0:
        return np.zeros(0, np.int64), start
    table, width = _decode_table(np.asarray(lengths, np.int64))
    end = min(bits.size, start + count * width)  # a valid stream ends by then
    out = bytearray(count)
    pos, lo, entries = start, start, b""
    for i in range(count):
        if pos >= lo + len(entries):  # past the decoded windows: decode the next chunk
            lo = pos
            entries = _entries(bits, lo, min(lo + _CHUNK, end), end, table, width) if pos < end else b""
        entry = entries[pos - lo] if pos < lo + len(entries) else 0
        if not entry & 15:
            raise MalformedUpdate(f"{what}: Huffman stream truncated or invalid")
        out[i] = entry >> 4
        pos += entry & 15
    if pos > end:
        raise MalformedUpdate(f"{what}: Huffman stream truncated")
    return np.frombuffer(out, np.uint8).astype(np.int64), pos
