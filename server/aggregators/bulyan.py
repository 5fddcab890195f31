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
(see ``_common``) and one masked dot product per coordinate.
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


def neighbours(r: int, f: int) -> int:
    """Krum's neighbour count on a set of ``r`` updates, clamped as in :func:`krum_scores`."""
    return min(max(r - f - 2, 1), r - 1)


class _SortedRows:
    """Per row: its distances sorted once, and a pointer ``p`` to the last of the ``count`` nearest
    live neighbours whose distances ``score`` sums. Removing an update and shrinking the neighbour
    count then costs O(n) per Krum pick instead of a fresh ``(r, r)`` partition."""

    def __init__(self, d2: np.ndarray, k: int) -> None:
        n = d2.shape[0]
        others = d2.copy()
        np.fill_diagonal(others, np.inf)  # itself sorts last and is never reached
        self.order = np.argsort(others, axis=1, kind="stable")  # (n, n)
        self.dist = np.take_along_axis(others, self.order, axis=1)  # (n, n), ascending
        self.rank = np.empty_like(self.order)  # rank[i, j] = position of j in row i
        np.put_along_axis(self.rank, self.order, np.broadcast_to(np.arange(n), (n, n)), axis=1)
        self.rows = np.arange(n)
        self.alive = np.ones(n, dtype=bool)
        self.score = self.dist[:, :k].sum(axis=1)
        self.p = np.full(n, k - 1)
        self.count = np.full(n, k)

    def _live_at(self, p: np.ndarray) -> np.ndarray:
        return self.alive[self.order[self.rows, np.clip(p, 0, len(self.rows) - 1)]]

    def remove(self, j: int, k: int) -> None:
        """Drop update ``j`` everywhere, then make every live row sum its ``k`` nearest live others."""
        self.alive[j] = False
        pos = self.rank[:, j]
        hit = self.alive & (pos <= self.p)  # j was among the row's counted neighbours
        self.score -= np.where(hit, self.dist[self.rows, pos], 0.0)
        self.count -= hit
        self._step(self.alive & (self.p >= 0) & ~self._live_at(self.p), -1)  # p sat on j: retreat
        while np.any(drop := self.alive & (self.count > k)):
            self.score -= np.where(drop, self.dist[self.rows, np.maximum(self.p, 0)], 0.0)
            self.count -= drop
            self.p -= drop
            self._step(drop & (self.p >= 0) & ~self._live_at(self.p), -1)
        while np.any(add := self.alive & (self.count < k)):
            self.p += add
            self._step(add & ~self._live_at(self.p), +1)
            self.score += np.where(add, self.dist[self.rows, self.p], 0.0)
            self.count += add

    def _step(self, move: np.ndarray, direction: int) -> None:
        """Move the flagged pointers past dead neighbours in ``direction``."""
        while np.any(move):
            self.p += direction * move
            move &= ~self._live_at(self.p) & (self.p >= 0)


EXACT_BELOW = 128  # sets of at most this many updates are rescored from scratch


def recursive_krum(d2: np.ndarray, f: int, theta: int) -> np.ndarray:
    """Indices (into the ``n`` updates) of ``theta`` recursive Krum choices, in selection order.

    Each pick is ``argmin`` of :func:`krum_scores` on the remaining updates (ties: lowest index).
    While more than ``EXACT_BELOW`` updates remain, the neighbour sums are maintained incrementally
    (:class:`_SortedRows`, O(n) per pick); below, every pick rescores the ``(r, r)`` sub-matrix, so
    exact ties (always present when two updates remain) break by index exactly as the definition.
    """
    n = d2.shape[0]
    remaining = np.arange(n)
    chosen: list[int] = []
    rows = _SortedRows(d2, neighbours(n, f)) if n > EXACT_BELOW else None
    while len(chosen) < theta and rows is not None and n - len(chosen) > EXACT_BELOW:
        best = int(np.argmin(np.where(rows.alive, rows.score, np.inf)))
        chosen.append(best)
        rows.remove(best, neighbours(n - len(chosen), f))
    if rows is not None:
        remaining = np.flatnonzero(rows.alive)
    while len(chosen) < theta:  # at most EXACT_BELOW picks on the (r, r) sub-matrix
        best = int(np.argmin(krum_scores(d2[np.ix_(remaining, remaining)], f)))
        chosen.append(int(remaining[best]))
        remaining = np.delete(remaining, best)
    return np.asarray(chosen, dtype=np.int64)


def closest_to_median_mean(x: np.ndarray, selected: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate of the rows ``selected`` of ``x``: mean of the ``beta`` values closest to their
    median; ``(d,)`` float32.

    The chosen window is summed directly (masked dot product), not as a difference of prefix sums:
    a huge outlier outside the window must not leak in through cancellation.
    """
    theta = selected.shape[0]
    lo, hi = (theta - 1) // 2, theta // 2
    windows = theta - beta + 1  # candidate start positions of the beta-window (2f + 1)
    position = np.arange(theta)
    coef = np.full(theta, 1.0 / beta, dtype=np.float32)
    out = np.empty(x.shape[1], dtype=np.float32)
    for cols, v in sorted_column_blocks(x, selected):  # v (B, theta), each row sorted
        med = 0.5 * (v[:, lo].astype(np.float64) + v[:, hi])  # (B,)
        left = med[:, None] - v[:, :windows]  # distance of each window's lowest value
        right = v[:, beta - 1 :] - med[:, None]  # ... and of its highest
        start = np.argmin(np.maximum(left, right), axis=1)[:, None]  # (B, 1), lowest window on ties
        inside = (position >= start) & (position < start + beta)  # (B, theta)
        out[cols] = np.where(inside, v, np.float32(0.0)) @ coef
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
