"""``krum`` and ``multikrum`` (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", Sec. 4:
with ``f`` assumed attackers, the score of update ``i`` is

    s(i) = sum_{j in N_i} ||x_i - x_j||^2,

``N_i`` being the ``n - f - 2`` updates closest to ``x_i`` (``j != i``). Krum returns the update with
the lowest score and needs ``2f + 2 < n``. Multi-Krum returns the plain (unweighted) average of the
``m`` updates with the lowest scores (the paper's definition; Flower's ``aggregate_krum`` averages
them weighted by sample counts instead). Ties go to the lowest index (stable sort).

Distances come from the centred Gram matrix (one blocked float32 product accumulated in float64),
not from ``n^2`` vector differences.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import as_stack, check_count, pairwise_sq_distances
from stamen.server.aggregators.base import Aggregator, check_stack, register


def check_krum_size(rule: str, n: int, f: int) -> None:
    """``ValueError`` naming ``assumed_byzantine`` unless ``2f + 2 < n``."""
    if not 2 * f + 2 < n:
        raise ValueError(
            f"{rule} needs 2*assumed_byzantine + 2 < n; got assumed_byzantine={f}, n={n} updates"
        )


def krum_scores(d2: np.ndarray, f: int) -> np.ndarray:
    """Krum scores from the ``(n, n)`` squared distances: sum over the ``n - f - 2`` nearest others.

    The neighbour count is clamped to ``[1, n - 1]`` (used by Bulyan's shrinking sets, where
    ``n - f - 2`` can reach 0, the same clamp as Flower's ``aggregate_krum``); a single update scores 0.
    """
    n = d2.shape[0]
    k = min(max(n - f - 2, 1), n - 1)
    if k <= 0:
        return np.zeros(n, dtype=np.float64)
    others = d2.copy()
    np.fill_diagonal(others, np.inf)  # never count x_i as its own neighbour
    return np.partition(others, k - 1, axis=1)[:, :k].sum(axis=1)


def krum_select(updates: np.ndarray, f: int, m: int) -> np.ndarray:
    """Indices of the ``m`` updates with the lowest Krum scores, best first (ties: lowest index)."""
    scores = krum_scores(pairwise_sq_distances(as_stack(updates)), f)
    return np.argsort(scores, kind="stable")[:m]


@register("krum")
def krum(assumed_byzantine: int = 0) -> Aggregator:
    """Krum: the single update with the lowest score.

    Parameters
    ----------
    assumed_byzantine : int, default 0
        ``f``, the number of attackers the rule assumes (not the scenario's actual number);
        each call checks ``2f + 2 < n``. ``weights`` are validated and ignored.
    """
    f = check_count("krum: assumed_byzantine", assumed_byzantine)

    def agg(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        check_stack(updates, weights)
        check_krum_size("krum", updates.shape[0], f)
        best = krum_select(updates, f, 1)[0]
        return np.array(updates[best], dtype=np.float32)

    return agg


@register("multikrum")
def multikrum(assumed_byzantine: int = 0, num_selected: int | None = None) -> Aggregator:
    """Multi-Krum: the unweighted mean of the ``m`` best-scored updates.

    Parameters
    ----------
    assumed_byzantine : int, default 0
        ``f``; each call checks ``2f + 2 < n``.
    num_selected : int, optional
        ``m`` in ``[1, n]``; default ``n - f`` (the choice of El Mhamdi et al. 2018 and of the
        Shejwalkar & Houmansadr 2021 experiments). ``weights`` are validated and ignored.
    """
    f = check_count("multikrum: assumed_byzantine", assumed_byzantine)
    m_fixed = None if num_selected is None else check_count("multikrum: num_selected", num_selected, 1)

    def agg(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        check_stack(updates, weights)
        n = updates.shape[0]
        check_krum_size("multikrum", n, f)
        m = n - f if m_fixed is None else m_fixed
        if m > n:
            raise ValueError(f"multikrum: num_selected={m} exceeds the n={n} updates of the round")
        coef = np.zeros(n, dtype=np.float32)  # (n,): 1/m on the chosen rows, no (m, d) copy
        coef[krum_select(updates, f, m)] = 1.0 / m
        return np.asarray(coef @ as_stack(updates), dtype=np.float32)

    return agg
