"""``frl``: Federated Rank Learning's vote over the clients' edge rankings.

Mozaffari, Shejwalkar and Houmansadr, "Every Vote Counts: Ranking-Based Training of Federated
Learning to Resist Poisoning Attacks", USENIX Security 2023 (arXiv 2110.04350), Algorithm 1 server
side (majority vote over rankings), ported from ``utils.py::FRL_Vote`` of SPIN-UMass/FRL @ 4cf2550.
Per score tensor ``l`` with ``n`` edges and clients ``u = 1..U``:

1. ``P_u = argsort(R_u)``: the position (reputation) of every edge in client ``u``'s ranking
   ``R_u`` (a permutation of ``0..n-1``, ascending score);
2. ``V = sum_u P_u`` (int64; one vote per client, client weights ignored);
3. ``R_g = argsort(V)`` (ascending, ties to the lower edge index);
4. ``S[R_g[j]] = init_sorted[j]``: the new scores are the **initial** sorted score values
   reassigned in the voted order, so they are always a permutation of the initial values.

Engine contract: :class:`~stamen.server.rounds.RoundAggregator` calls ``bind_round(table,
base_flat)`` before every aggregation; the first bind (the initial model) records
``init_sorted``. The rule returns ``new_scores - base_scores`` on score segments and 0 elsewhere,
so the engine's ``base + server_lr * output`` gives the voted scores **only with server_lr = 1**
(exact up to one float32 rounding of ``base + (new - base)``; the next vote starts again from the
stored initial values, so that rounding never accumulates). Rows that are not permutations on
every score segment are dropped from the vote (``last_dropped`` counts them); the code would
``argsort`` whatever it gets, which also bounds a bad row to one vote.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from stamen.protocols import TensorInfo
from stamen.server.aggregators.base import check_stack, register

log = logging.getLogger("stamen.server")

REQUIRED_SERVER_LR = 1.0


def score_segments(table: Sequence[TensorInfo]) -> list[tuple[str, int, int]]:
    """``(name, start, stop)`` of every ``*.scores`` tensor in the flattened layout."""
    out, offset = [], 0
    for info in table:
        if info.name == "scores" or info.name.endswith(".scores"):
            out.append((info.name, offset, offset + info.size))
        offset += info.size
    return out


def positions(rankings: np.ndarray) -> np.ndarray | None:
    """Inverse permutations ``P[u, R[u, j]] = j`` of integer-valued rankings ``(U, n)``.

    Returns ``(U, n)`` int64, or ``None`` if a row is not a permutation of ``0..n-1``.
    Equal to ``argsort(R, axis=1)`` for valid rankings, in O(U n).
    """
    u, n = rankings.shape
    r = np.asarray(rankings)
    if not np.all(np.isfinite(r)) or np.any(r != np.round(r)) or np.any((r < 0) | (r >= n)):
        return None
    ri = r.astype(np.int64)
    pos = np.full((u, n), -1, dtype=np.int64)
    np.put_along_axis(pos, ri, np.broadcast_to(np.arange(n, dtype=np.int64), (u, n)), axis=1)
    if np.any(pos < 0):  # a repeated index left a hole
        return None
    return pos


def valid_rows(rankings: np.ndarray) -> np.ndarray:
    """Boolean ``(U,)``: which rows of ``(U, n)`` are permutations of ``0..n-1``."""
    return np.array([positions(row[None, :]) is not None for row in rankings], dtype=bool)


def frl_vote(rankings: np.ndarray, init_sorted: np.ndarray) -> np.ndarray:
    """New scores ``(n,)`` float32 from valid rankings ``(U, n)`` (steps 1-4 of the module doc).

    Raises
    ------
    ValueError
        If a row is not a permutation, ``U == 0``, or ``init_sorted`` has the wrong length.
    """
    if rankings.ndim != 2 or rankings.shape[0] == 0:
        raise ValueError(f"rankings must be a non-empty (U, n) stack, got {rankings.shape}")
    if init_sorted.shape != (rankings.shape[1],):
        raise ValueError(f"init_sorted must have shape ({rankings.shape[1]},), got {init_sorted.shape}")
    pos = positions(rankings)
    if pos is None:
        raise ValueError("every ranking must be a permutation of 0..n-1")
    votes = pos.sum(axis=0, dtype=np.int64)  # (n,)
    global_rank = np.argsort(votes, kind="stable")  # (n,) edge at each voted rank
    scores = np.empty(rankings.shape[1], dtype=np.float32)
    scores[global_rank] = init_sorted
    return scores


class FRLVote:
    """The ``frl`` rule: ``(stack (n, d), weights) -> (d,)`` after ``bind_round``.

    Attributes
    ----------
    init_sorted : dict[str, ndarray] | None
        Ascending initial score values per score tensor, set by the first ``bind_round``.
    last_dropped : int
        Rows excluded from the last vote because they were not permutations.
    """

    required_server_lr = REQUIRED_SERVER_LR

    def __init__(self) -> None:
        self.init_sorted: dict[str, np.ndarray] | None = None
        self._segments: list[tuple[str, int, int]] = []
        self._base: np.ndarray | None = None
        self.last_dropped = 0

    def bind_round(self, table: tuple[TensorInfo, ...], base_flat: np.ndarray) -> None:
        """Record the layout and base; the first call also records the initial sorted scores."""
        segments = score_segments(table)
        if not segments:
            raise ValueError("frl rule needs a supermask model: no '*.scores' tensor in the model")
        if self.init_sorted is None:
            self.init_sorted = {
                name: np.sort(base_flat[a:b].astype(np.float32), kind="stable") for name, a, b in segments
            }
        elif [s[0] for s in segments] != list(self.init_sorted):
            raise ValueError("frl rule: the model's score tensors changed between rounds")
        self._segments = segments
        self._base = np.asarray(base_flat, dtype=np.float32)

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Vote per score tensor; ``new - base`` on scores, 0 elsewhere (``weights`` ignored)."""
        check_stack(updates, weights)
        if self._base is None or self.init_sorted is None:
            raise ValueError("frl rule: bind_round(table, base_flat) must be called before aggregating")
        if updates.shape[1] != self._base.shape[0]:
            raise ValueError(f"updates have {updates.shape[1]} columns, the bound model {self._base.shape[0]}")
        keep = np.ones(updates.shape[0], dtype=bool)
        for _, a, b in self._segments:
            keep &= valid_rows(updates[:, a:b])
        self.last_dropped = int((~keep).sum())
        out = np.zeros(updates.shape[1], dtype=np.float32)
        if self.last_dropped:
            log.warning("frl: dropped %d update(s) that are not rankings", self.last_dropped)
        if not keep.any():
            return out
        for name, a, b in self._segments:
            new = frl_vote(updates[keep, a:b], self.init_sorted[name])
            out[a:b] = new - self._base[a:b]
        return out


@register("frl")
def frl() -> FRLVote:
    """FRL majority vote over edge rankings (stateful: remembers the initial scores)."""
    return FRLVote()
