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

Engine contract: the round driver (:class:`~stamen.server.driver.RoundDriver`) calls
``begin_round(ctx)`` before every aggregation; the first call (the initial model) records
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
from stamen.server.aggregators.base import RoundContext, Rule, RuleTraits, check_stack, register

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


def row_positions(ranking: np.ndarray) -> np.ndarray | None:
    """Inverse permutation ``P[R[j]] = j`` (int64 ``(n,)``) of one ranking, or ``None`` if ``R``
    is not a permutation of ``0..n-1``. Equal to ``argsort(R)`` for valid rankings, in O(n)."""
    r = np.asarray(ranking).reshape(-1)
    n = r.size
    if not np.all(np.isfinite(r)) or np.any(r != np.round(r)) or np.any((r < 0) | (r >= n)):
        return None
    pos = np.full(n, -1, dtype=np.int64)
    pos[r.astype(np.int64)] = np.arange(n, dtype=np.int64)
    return None if np.any(pos < 0) else pos  # a repeated index leaves a hole


def positions(rankings: np.ndarray) -> np.ndarray | None:
    """:func:`row_positions` of every row of ``(U, n)``; ``None`` if any row is invalid."""
    rows = [row_positions(row) for row in rankings]
    if any(p is None for p in rows):
        return None
    return np.stack(rows).reshape(rankings.shape).astype(np.int64)  # type: ignore[arg-type]


def vote_sum(rankings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Borda sum ``V = sum_u P_u`` over the valid rows, O(n) memory; returns ``(V, valid (U,))``."""
    votes = np.zeros(rankings.shape[1], dtype=np.int64)  # int64: 25 x 2.4M positions exceed 2**24
    valid = np.zeros(rankings.shape[0], dtype=bool)
    for u, row in enumerate(rankings):
        pos = row_positions(row)
        if pos is not None:
            votes += pos
            valid[u] = True
    return votes, valid


def assign_initial(votes: np.ndarray, init_sorted: np.ndarray) -> np.ndarray:
    """``S[argsort(V)[j]] = init_sorted[j]`` (ties to the lower edge index); float32 ``(n,)``."""
    scores = np.empty(len(votes), dtype=np.float32)
    scores[np.argsort(votes, kind="stable")] = init_sorted
    return scores


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
    votes, valid = vote_sum(rankings)
    if not valid.all():
        raise ValueError("every ranking must be a permutation of 0..n-1")
    return assign_initial(votes, init_sorted)


class FRLVote(Rule):
    """The ``frl`` rule: ``(stack (n, d), weights) -> (d,)`` after ``begin_round``.

    Attributes
    ----------
    init_sorted : dict[str, ndarray] | None
        Ascending initial score values per score tensor, set by the first ``begin_round``.
    last_dropped : int
        Rows excluded from the last vote because they were not permutations.
    """

    traits = RuleTraits(required_server_lr=REQUIRED_SERVER_LR)

    def __init__(self) -> None:
        self.init_sorted: dict[str, np.ndarray] | None = None
        self._segments: list[tuple[str, int, int]] = []
        self._base: np.ndarray | None = None
        self.last_dropped = 0

    def begin_round(self, ctx: RoundContext) -> None:
        """Record the layout and base; the first call also records the initial sorted scores."""
        table, base_flat = ctx.table, ctx.base
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
            raise ValueError("frl rule: begin_round(ctx) must be called before aggregating")
        if updates.shape[1] != self._base.shape[0]:
            raise ValueError(f"updates have {updates.shape[1]} columns, the model {self._base.shape[0]}")
        votes, keep = {}, np.ones(updates.shape[0], dtype=bool)
        for name, a, b in self._segments:
            votes[name], valid = vote_sum(updates[:, a:b])
            keep &= valid
        self.last_dropped = int((~keep).sum())
        out = np.zeros(updates.shape[1], dtype=np.float32)
        if self.last_dropped:
            log.warning("frl: dropped %d update(s) that are not rankings", self.last_dropped)
        if not keep.any():
            return out
        for name, a, b in self._segments:
            for u in np.flatnonzero(~keep):  # a row invalid elsewhere: take back its valid votes here
                pos = row_positions(updates[u, a:b])
                if pos is not None:
                    votes[name] -= pos
            out[a:b] = assign_initial(votes[name], self.init_sorted[name]) - self._base[a:b]
        return out


@register("frl")
def frl() -> FRLVote:
    """FRL majority vote over edge rankings (stateful: remembers the initial scores)."""
    return FRLVote()
