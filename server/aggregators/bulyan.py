"""``bulyan`` (El Mhamdi, Guerraoui, Rouault, ICML 2018) over Krum.

El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium", Sec. 4, with
``f`` assumed attackers and ``n >= 4f + 3``:

1. Selection: apply Krum recursively ``theta = n - 2f`` times; each time move the Krum choice of the
   remaining set into the selection set ``S``. Krum on a remaining set of size ``r`` uses the
   ``r - f - 2`` nearest neighbours, clamped to ``[1, r - 1]`` (late iterations have ``r < 2f + 3``;
   the clamp is Flower's ``aggregate_krum``'s).
2. Aggregation, per coordinate ``j``: with ``med_j`` the median of ``S``'s values and
   ``beta = theta - 2f``, output the mean of the ``beta`` values of ``S`` closest to ``med_j``.

In one dimension the ``beta`` values closest to the median are a contiguous window of the sorted
values; the window with the smallest largest distance is taken (ties: the lower window). This
replaces the ``argpartition`` of ``|S - med|`` along the client axis by one SIMD sort per block
(see ``_common``) and ``2f + 1`` small dot products per coordinate block.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import (
    as_stack,
    check_count,
    pairwise_sq_distances,
    sorted_column_blocks,
)
from stamen.server.aggregators.base import Aggregator, check_stack, register
from stamen.server.aggregators.krum import krum_scores


def recursive_krum(d2: np.ndarray, f: int, theta: int) -> np.ndarray:
    """Indices (into the ``n`` updates) of ``theta`` recursive Krum choices, in selection order."""
    remaining = np.arange(d2.shape[0])
    chosen = []
    for _ in range(theta):  # theta <= n iterations over the (r, r) distance sub-matrix
        sub = d2[np.ix_(remaining, remaining)]
        best = int(np.argmin(krum_scores(sub, f)))  # first index on ties
        chosen.append(int(remaining[best]))
        remaining = np.delete(remaining, best)
    return np.asarray(chosen, dtype=np.int64)


def closest_to_median_mean(x: np.ndarray, selected: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate of the rows ``selected`` of ``x``: mean of the ``beta`` values closest to their
    median; ``(d,)`` float32.

    Each candidate window's sum is a separate float32 dot product over its own ``beta`` values (no
    prefix-sum differences: a huge outlier outside the window must not leak in by cancellation).
    """
    theta = selected.shape[0]
    lo, hi = (theta - 1) // 2, theta // 2
    windows = theta - beta + 1  # candidate start positions of the beta-window (2f + 1)
    ones = np.full(beta, 1.0 / beta, dtype=np.float32)
    out = np.empty(x.shape[1], dtype=np.float32)
    for cols, v in sorted_column_blocks(x, selected):  # v (B, theta), each row sorted
        med = 0.5 * (v[:, lo].astype(np.float64) + v[:, hi])  # (B,)
        left = med[:, None] - v[:, :windows]  # distance of each window's lowest value
        right = v[:, beta - 1 :] - med[:, None]  # ... and of its highest
        start = np.argmin(np.maximum(left, right), axis=1)  # (B,), first (lowest) on ties
        means = np.stack([v[:, s : s + beta] @ ones for s in range(windows)], axis=1)  # (B, windows)
        out[cols] = means[np.arange(v.shape[0]), start]
    return out


@register("bulyan")
def bulyan(assumed_byzantine: int = 0) -> Aggregator:
    """Bulyan over Krum.

    Parameters
    ----------
    assumed_byzantine : int, default 0
        ``f``; each call checks ``4f + 3 <= n``. ``weights`` are validated and ignored.
    """
    f = check_count("bulyan: assumed_byzantine", assumed_byzantine)

    def agg(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        check_stack(updates, weights)
        x = as_stack(updates)
        n = x.shape[0]
        if not 4 * f + 3 <= n:
            raise ValueError(
                f"bulyan needs 4*assumed_byzantine + 3 <= n; got assumed_byzantine={f}, n={n} updates"
            )
        theta = n - 2 * f
        chosen = np.sort(recursive_krum(pairwise_sq_distances(x), f, theta))
        return closest_to_median_mean(x, chosen, theta - 2 * f)

    return agg
