"""Lossless coding of the positions of a sparse tensor's kept entries (FedZip §3, ComPEFT).

The kept flat indices ``i_0 < i_1 < ... < i_{k-1}`` of an ``n``-element tensor are written in one
of three ways, FedZip's three position encodings made decodable:

``absolute`` (mode 0)
    every index at ``ceil(log2 n)`` bits (FedZip charges a flat 27 bits per address).
``gaps`` (mode 1)
    the gaps ``g_0 = i_0``, ``g_j = i_j - i_{j-1} - 1`` (>= 0) at a fixed width ``w``, the bits
    of the largest gap (FedZip's "difference of addresses" charges ``floor(log2 g) + 1`` bits per
    gap with no way for a decoder to find the boundaries; a fixed width is the decodable form).
``entropy`` (mode 2)
    the gaps in a Golomb-Rice code with parameter ``b``: the low ``b`` bits of every gap (fixed
    width), then every quotient ``g >> b`` in unary (that many 0s, then a 1). Golomb codes are
    the optimal prefix codes for geometric gaps (Gallager & van Voorhis 1975), which is what
    top-k positions of a noisy update look like; ``b`` is chosen per tensor to minimise the
    exact bit count ``sum(g >> b) + k * (1 + b)``. Keeping the two parts in separate runs makes
    decoding fully vectorized (the unary terminators are just the 1-bits).

``auto`` picks the mode with the fewest bits (ties: the lower mode). The choice and its
parameter (``w`` or ``b``) travel in one byte: ``mode << 6 | param``.
"""

from __future__ import annotations

import numpy as np

from ..errors import MalformedUpdate
from .bitpack import bits_to_fixed, fixed_to_bits, width_for

__all__ = ["MODES", "decode_positions", "encode_positions", "position_bits"]

MODES = ("absolute", "gaps", "entropy")
_PARAM_MASK = 0x3F


def _gaps(idx: np.ndarray) -> np.ndarray:
    """(k,) int64 gaps ``i_j - i_{j-1} - 1`` with ``i_{-1} = -1``."""
    return np.diff(idx.astype(np.int64), prepend=np.int64(-1)) - 1


def _rice_parameter(gaps: np.ndarray) -> tuple[int, int]:
    """(bits, b) of the cheapest Golomb-Rice code for ``gaps``."""
    best = (0, 0)
    for b in range(width_for(int(gaps.max())) + 1):
        bits = int((gaps >> b).sum()) + gaps.size * (1 + b)
        if b == 0 or bits < best[0]:
            best = (bits, b)
    return best


def position_bits(idx: np.ndarray, n: int) -> dict[str, tuple[int, int]]:
    """Exact bit count and parameter of every mode for sorted indices ``idx`` in ``[0, n)``."""
    k = idx.size
    if k == 0:
        return {mode: (0, 0) for mode in MODES}
    gaps = _gaps(idx)
    gap_width = width_for(int(gaps.max()))
    return {
        "absolute": (k * width_for(n - 1), 0),
        "gaps": (k * gap_width, gap_width),
        "entropy": _rice_parameter(gaps),
    }


def encode_positions(idx: np.ndarray, n: int, mode: str) -> tuple[int, np.ndarray]:
    """Write sorted indices ``idx`` in ``[0, n)``.

    Parameters
    ----------
    idx : numpy.ndarray
        (k,) strictly increasing integer indices.
    n : int
        Number of elements of the tensor.
    mode : str
        One of :data:`MODES` or ``"auto"``.

    Returns
    -------
    tuple[int, numpy.ndarray]
        The header byte ``mode << 6 | param`` and the (bits,) 0/1 uint8 stream.
    """
    costs = position_bits(idx, n)
    if mode == "auto":
        mode = min(MODES, key=lambda m: (costs[m][0], MODES.index(m)))
    code, param = MODES.index(mode), costs[mode][1]
    if idx.size == 0:
        return code << 6, np.zeros(0, np.uint8)
    if mode == "absolute":
        return code << 6, fixed_to_bits(idx, width_for(n - 1))
    gaps = _gaps(idx)
    if mode == "gaps":
        return code << 6 | param, fixed_to_bits(gaps, param)
    quotients = gaps >> param  # (k,)
    unary = np.zeros(int(quotients.sum()) + idx.size, np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 1
    low = gaps & ((1 << param) - 1)
    return code << 6 | param, np.concatenate([fixed_to_bits(low, param), unary])


def _from_gaps(gaps: np.ndarray, n: int, what: str) -> np.ndarray:
    """Indices from int64 gaps, computed in place (``gaps`` is consumed)."""
    if gaps.size and int(gaps.max()) >= n:  # also keeps the cumulative sum far from overflow
        raise MalformedUpdate(f"{what}: position gap out of range")
    idx = gaps
    idx += 1
    np.cumsum(idx, out=idx)
    idx -= 1
    if idx.size and int(idx[-1]) >= n:
        raise MalformedUpdate(f"{what}: position beyond the tensor's {n} elements")
    return idx


def _decode_rice(
    bits: np.ndarray, start: int, count: int, n: int, b: int, what: str
) -> tuple[np.ndarray, int]:
    low = bits_to_fixed(bits[start:], b, count).view(np.int64)  # widths <= 40: no sign bit set
    unary_start = start + count * b
    ones = np.flatnonzero(bits[unary_start:])
    if ones.size < count:
        raise MalformedUpdate(f"{what}: unary stream truncated")
    ends = ones[:count]
    quotients = np.diff(ends, prepend=-1) - 1
    if int(quotients.max()) > n >> b:  # before shifting: a huge quotient cannot overflow
        raise MalformedUpdate(f"{what}: position gap out of range")
    return _from_gaps((quotients << b) | low, n, what), unary_start + int(ends[-1]) + 1


def decode_positions(
    bits: np.ndarray, start: int, count: int, n: int, header: int, what: str
) -> tuple[np.ndarray, int]:
    """Read ``count`` sorted indices in ``[0, n)`` written by :func:`encode_positions`.

    Returns
    -------
    tuple[numpy.ndarray, int]
        The (count,) int64 strictly increasing indices and the bit position after them.

    Raises
    ------
    MalformedUpdate
        For an unknown mode, a bad parameter, a truncated stream or out-of-range positions.
    """
    code, param = header >> 6, header & _PARAM_MASK
    if code >= len(MODES) or (code == 0 and param) or param > 40:
        raise MalformedUpdate(f"{what}: bad position header {header:#04x}")
    if count == 0:
        return np.zeros(0, np.int64), start
    if code == 0:
        width = width_for(n - 1)
        idx = bits_to_fixed(bits[start:], width, count).view(np.int64)
        if (count > 1 and not np.all(idx[1:] > idx[:-1])) or int(idx[-1]) >= n:
            raise MalformedUpdate(f"{what}: positions not strictly increasing below {n}")
        return idx, start + count * width
    if code == 1:
        gaps = bits_to_fixed(bits[start:], param, count).view(np.int64)
        return _from_gaps(gaps, n, what), start + count * param
    return _decode_rice(bits, start, count, n, param, what)
