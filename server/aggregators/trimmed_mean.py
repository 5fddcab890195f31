"""``trimmed_mean``: coordinate-wise beta-trimmed mean (Yin et al., ICML 2018).

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", Sec. 3, Option II: for every coordinate ``j`` drop the ``k`` largest and the
``k`` smallest of ``x_1j..x_nj`` and average the remaining ``n - 2k``; here ``k = floor(beta * n)``
(the convention of ``scipy.stats.trim_mean`` and Flower's ``FedTrimmedAvg``).
"""

from __future__ import annotations

import math

import numpy as np

from stamen.server.aggregators._common import as_stack, sorted_column_blocks
from stamen.server.aggregators.base import Aggregator, check_stack, register


def trimmed_count(beta: float, n: int) -> int:
    """``k = floor(beta * n)`` values trimmed from each end (a 1e-9 guard absorbs ``0.1 * 30``)."""
    return math.floor(beta * n + 1e-9)


def coordinate_trimmed_mean(updates: np.ndarray, beta: float) -> np.ndarray:
    """Mean of the ``n - 2k`` central values of every coordinate; ``(d,)`` float32.

    Raises
    ------
    ValueError
        When ``2k >= n`` (nothing would be left to average).
    """
    x = as_stack(updates)
    n = x.shape[0]
    k = trimmed_count(beta, n)
    if 2 * k >= n:
        raise ValueError(f"trimmed_mean: beta={beta} trims 2*{k} >= n={n} updates; need 2*floor(beta*n) < n")
    coef = np.full(n - 2 * k, 1.0 / (n - 2 * k), dtype=np.float32)
    out = np.empty(x.shape[1], dtype=np.float32)
    for cols, block in sorted_column_blocks(x):  # block (B, n), each row sorted
        out[cols] = block[:, k : n - k] @ coef  # BLAS gemv over the kept middle values only
    return out


@register("trimmed_mean")
def trimmed_mean(beta: float = 0.2) -> Aggregator:
    """Coordinate-wise trimmed mean.

    Parameters
    ----------
    beta : float, default 0.2
        Fraction trimmed from *each* end, ``0 <= beta < 0.5`` (Flower's ``FedTrimmedAvg`` default).
        ``floor(beta * n)`` values go from each side; ``weights`` are validated and ignored.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= float(beta) < 0.5:
        raise ValueError(f"trimmed_mean: beta must be a number in [0, 0.5), got {beta!r}")
    b = float(beta)

    def agg(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        check_stack(updates, weights)
        return coordinate_trimmed_mean(updates, b)

    return agg
