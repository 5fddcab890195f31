"""``rank_reversal``: FRL's own attack on rank voting (the malicious clients vote the reverse).

Mozaffari et al., "Every Vote Counts: Ranking-Based Training of Federated Learning to Resist
Poisoning Attacks", USENIX Security 2023 (arXiv 2110.04350), Section 5 (the worst-case attack on
FRL: reverse the benign ranking). Ported from ``FL_train.py::FRL_train`` ("malicious Client
Learning") of SPIN-UMass/FRL @ 4cf2550. What the code does, per round with malicious clients:

1. pick ``min(n_attackers, rand_mal_clients = 25)`` malicious clients *at random from all
   attackers* (not only those sampled this round) and train each one **separately and benignly**
   on its own data, from the global model; take each one's ranking ``R_m`` per layer;
2. pool the *rankings* (not the data): ``V = sum_m argsort(R_m)`` (sum of positions);
3. ``R_mal = argsort(V, descending)``: the combined ranking reversed;
4. every malicious client sampled this round submits ``R_mal``.

The attack pools whatever rows ``own`` holds. Both engines pass, through
:func:`stamen.simulations.adversary.attack_factory`, the updates of ``min(#attackers, pool_size)``
malicious partitions drawn per round from all attackers and trained from the round's global model
by the run's ``frl`` trainer (step 1 exactly; the omniscient adversary loads those partitions on
the server). Called directly without that pool, ``own`` is whatever the caller gives (e.g. only the
round's malicious rows, an approximation of step 1). Note the code pools the *rankings* of
separately trained clients, not their data (one model trained on the union would differ).
Descending-sort ties go to the lower edge index (``torch.sort(descending=True)`` is not
guaranteed stable).

The attack needs the model layout (which columns are score tensors): the engine calls
``begin_round(ctx)`` on it like on the ``frl`` rule. Non-score columns are 0.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.frl import score_segments, vote_sum
from stamen.simulations.attacks.base import OwnUpdateAttack, register_update_attack

DEFAULT_POOL_SIZE = 25  # FRL args.rand_mal_clients


def reversed_combined_ranking(rankings: np.ndarray) -> np.ndarray:
    """``argsort(sum_m argsort(R_m), descending)`` of valid rankings ``(m, n)``; int64 ``(n,)``.

    Raises
    ------
    ValueError
        If ``m == 0`` or a row is not a permutation of ``0..n-1``.
    """
    if rankings.ndim != 2 or rankings.shape[0] == 0:
        raise ValueError(f"rank_reversal needs a non-empty (m, n) stack of rankings, got {rankings.shape}")
    votes, valid = vote_sum(rankings)  # (n,) int64
    if not valid.all():
        raise ValueError("rank_reversal: every pooled ranking must be a permutation of 0..n-1")
    return np.argsort(-votes, kind="stable").astype(np.int64)


class RankReversal(OwnUpdateAttack):
    """``UpdateAttack`` forging every malicious row as the reversed pooled ranking.

    Parameters
    ----------
    pool_size : int, default 25
        How many malicious clients' rankings the code pools (``rand_mal_clients``), >= 1. The
        attack itself pools whatever ``own`` holds; the engines' adversary reads this to decide
        how many malicious partitions to train (see module docstring).
    """

    def __init__(self, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 1:
            raise ValueError(f"rank_reversal: pool_size must be >= 1, got {pool_size}")
        self.pool_size = pool_size
        self._segments: list[tuple[str, int, int]] | None = None
        self._dim = 0

    def begin_round(self, ctx: RoundContext) -> None:
        """Record which columns of a row are score tensors."""
        table, base_flat = ctx.table, ctx.base
        segments = score_segments(table)
        if not segments:
            raise ValueError("rank_reversal needs a supermask model: no '*.scores' tensor")
        self._segments = segments
        self._dim = int(np.asarray(base_flat).shape[0])

    def __call__(
        self,
        honest: np.ndarray,
        num_malicious: int,
        rng: np.random.Generator,
        own: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(num_malicious, d)`` rows, each the reversed pooled ranking of ``own`` (rng unused)."""
        del rng  # deterministic given the pooled rankings
        if self._segments is None:
            raise ValueError("rank_reversal: the engine must call begin_round(ctx) first")
        if own is None or own.ndim != 2 or own.shape[0] == 0:
            raise ValueError("rank_reversal pools the malicious clients' own rankings: pass own=(m, d)")
        if own.shape[1] != self._dim or honest.shape[1] != self._dim:
            raise ValueError(f"rank_reversal: rows must have {self._dim} columns (the bound model)")
        if num_malicious < 0:
            raise ValueError(f"num_malicious must be >= 0, got {num_malicious}")
        row = np.zeros(self._dim, dtype=np.float32)
        for _, a, b in self._segments:
            row[a:b] = reversed_combined_ranking(own[:, a:b]).astype(np.float32)
        return np.tile(row, (num_malicious, 1))


@register_update_attack("rank_reversal")
def rank_reversal(pool_size: int = DEFAULT_POOL_SIZE) -> RankReversal:
    """Factory for the attack registry: ``create_update_attack("rank_reversal", pool_size=25)``."""
    return RankReversal(pool_size=pool_size)
