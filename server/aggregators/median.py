"""``median``: coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", Sec. 3,
Option I: ``g_j = med{x_1j, ..., x_nj}`` for every coordinate ``j`` (the mean of the two middle values
when ``n`` is even, as ``np.median``). Tolerates any ``f < n/2`` attackers per coordinate.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import as_stack, sorted_column_blocks
from stamen.server.aggregators.base import Aggregator, check_stack, register


def coordinate_median(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Coordinate-wise median of the ``(n, d)`` float32 stack; returns ``(d,)`` float32.

    ``weights`` are validated and ignored: a client's reported sample count is not trusted by a
    robust rule (an attacker could claim any count).
    """
    check_stack(updates, weights)
    x = as_stack(updates)
    n = x.shape[0]
    lo, hi = (n - 1) // 2, n // 2
    out = np.empty(x.shape[1], dtype=np.float32)
    for cols, block in sorted_column_blocks(x):  # block (B, n), each row sorted
        out[cols] = block[:, lo] if lo == hi else 0.5 * (block[:, lo] + block[:, hi])
    return out


@register("median")
def median() -> Aggregator:
    """Coordinate-wise median; no parameters."""
    return coordinate_median
