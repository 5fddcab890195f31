"""``nnm``: nearest-neighbour mixing (Allouah et al., AISTATS 2023).

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for Optimal
Byzantine ML under Heterogeneity", Algorithm 1: with ``f`` assumed attackers, every update is
replaced by the average of its ``n - f`` nearest neighbours (Euclidean), itself included:

    y_i = (1 / (n - f)) * sum_{j in N_i} x_j,    |N_i| = n - f,  i in N_i.

Then any rule runs on ``y``. Needs ``2f < n``. Distance ties go to the lowest index; the row itself
always counts as its own nearest neighbour. Weights pass through unchanged (row ``i`` stays client
``i``). The mixing is one ``(u, n) @ (n, d)`` product over the ``u <= n`` distinct neighbourhoods.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import as_stack, check_count, pairwise_sq_distances
from stamen.server.aggregators.base import check_stack
from stamen.server.aggregators.pre_base import PreAggregator, register_pre


def mixing_matrix(d2: np.ndarray, f: int) -> np.ndarray:
    """``(n, n)`` row-stochastic float32 matrix averaging each row's ``n - f`` nearest neighbours."""
    n = d2.shape[0]
    k = n - f
    ranked = d2.copy()
    np.fill_diagonal(ranked, -1.0)  # self first, whatever the float noise of a zero distance
    nearest = np.argsort(ranked, axis=1, kind="stable")[:, :k]  # (n, k)
    mix = np.zeros((n, n), dtype=np.float32)
    np.put_along_axis(mix, nearest, np.float32(1.0 / k), axis=1)
    return mix


def mix_rows(mix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mix @ x`` as float32 ``(n, d)``, one product per *distinct* row of ``mix``.

    Rows whose neighbourhoods coincide (typically every honest row, when the attackers are the
    ``f`` farthest from all of them) have equal mixing rows; only the distinct ones enter the
    ``(u, n) @ (n, d)`` GEMM (``u`` distinct rows), then each output row is copied from its class.
    All rows distinct: the plain ``(n, n) @ (n, d)`` product, same cost as before.
    """
    distinct, inverse = np.unique(mix, axis=0, return_inverse=True)
    if distinct.shape[0] == mix.shape[0]:
        return np.asarray(mix @ x, dtype=np.float32)
    mixed = np.asarray(distinct @ x, dtype=np.float32)  # (u, d)
    return mixed[inverse.reshape(-1)]


@register_pre("nnm")
def nnm(assumed_byzantine: int = 0) -> PreAggregator:
    """Nearest-neighbour mixing.

    Parameters
    ----------
    assumed_byzantine : int, default 0
        ``f``; each call checks ``2f < n``. ``f = 0`` averages everything into every row.
    """
    f = check_count("nnm: assumed_byzantine", assumed_byzantine)

    def pre(updates: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        check_stack(updates, weights)
        x = as_stack(updates)
        n = x.shape[0]
        if not 2 * f < n:
            raise ValueError(f"nnm needs 2*assumed_byzantine < n; got assumed_byzantine={f}, n={n} updates")
        return mix_rows(mixing_matrix(pairwise_sq_distances(x), f), x), weights

    return pre
