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
(see ``_common``), a running minimum over the ``2f + 1`` window costs and outward running sums.
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


def window_starts(v: np.ndarray, beta: int) -> np.ndarray:
    """Per column of the sorted ``(theta, B)`` block: start of the ``beta``-window closest to the
    median (smallest largest distance to it; ties: the lowest start, as ``argmin``); ``(B,)``.

    The costs of the ``theta - beta + 1`` windows are turned into running minima row by row; the
    first start reaching the overall minimum is the number of running minima still above it. Rows
    of ``B`` contiguous values keep every step one long vector operation.
    """
    theta = v.shape[0]
    lo, hi = (theta - 1) // 2, theta // 2
    windows = theta - beta + 1
    med = 0.5 * (v[lo].astype(np.float64) + v[hi])  # (B,)
    cost = np.maximum(med - v[:windows], v[beta - 1 :] - med)  # (windows, B): lowest / highest value
    for s in range(1, windows):
        np.minimum(cost[s - 1], cost[s], out=cost[s])
    return (cost > cost[-1]).sum(axis=0, dtype=np.intp)


def window_means(v: np.ndarray, start: np.ndarray, beta: int) -> np.ndarray:
    """Per column of the sorted ``(theta, B)`` block: mean of rows ``start .. start + beta - 1``.

    Every window holds the shared middle ``[e, beta)``, ``e = theta - beta`` (the last start), plus
    ``[s, e)`` below it and ``[beta, beta + s)`` above. Those two parts are running sums growing
    outwards from the middle, so a value outside the chosen window never enters its sum (no
    cancellation against a huge outlier). When ``beta < e`` the windows share no middle and the
    window is summed under a mask instead.
    """
    theta, width = v.shape
    edge = theta - beta
    if beta < edge:
        position = np.arange(theta)[:, None]
        inside = (position >= start) & (position < start + beta)
        return np.asarray(np.where(inside, v, np.float32(0.0)).sum(axis=0) / np.float32(beta))
    low = np.zeros((edge + 1, width), dtype=np.float32)  # low[s] = v[s:edge].sum(0)
    high = np.zeros((edge + 1, width), dtype=np.float32)  # high[s] = v[beta:beta + s].sum(0)
    for s in range(edge - 1, -1, -1):
        np.add(low[s + 1], v[s], out=low[s])
    for s in range(1, edge + 1):
        np.add(high[s - 1], v[beta + s - 1], out=high[s])
    middle = np.ones(beta - edge, dtype=np.float32) @ v[edge:beta]
    cols = np.arange(width)
    return np.asarray((middle + low[start, cols] + high[start, cols]) / np.float32(beta))


def closest_to_median_mean(x: np.ndarray, selected: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate of the rows ``selected`` of ``x``: mean of the ``beta`` values closest to their
    median; ``(d,)`` float32.

    Each sorted column block is transposed back to ``(theta, B)`` (one rank per row) so that the
    window search and sums are long contiguous vector operations.
    """
    out = np.empty(x.shape[1], dtype=np.float32)
    for cols, block in sorted_column_blocks(x, selected):  # block (B, theta), each row sorted
        v = np.ascontiguousarray(block.T)  # (theta, B)
        out[cols] = window_means(v, window_starts(v, beta), beta)
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
