"""``geomed``: geometric median by the smoothed Weiszfeld algorithm (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Trans. Signal
Processing 2022, Algorithm 2 (smoothed Weiszfeld) for

    v* = argmin_v  sum_i alpha_i * max(nu, ||v - x_i||)      (smoothed objective, Eq. 4)

starting from the weighted mean ``v_0 = sum_i alpha_i x_i`` and iterating

    beta_i = alpha_i / max(nu, ||v_t - x_i||),   v_{t+1} = sum_i beta_i x_i / sum_i beta_i,

stopping after ``max_iter`` steps or when the objective ``g(v) = sum_i alpha_i ||v - x_i||`` changes by
less than ``tol * g(v_{t+1})``. Defaults are the authors' code's (krishnap25/RFA,
``geometric_median_update``: ``maxiter=4, eps=1e-5, ftol=1e-6``). ``alpha`` are the normalised
client weights (RFA weighs by sample counts), uniform without weights.

Every iterate is a convex combination ``v = sum_i c_i x_i``, so the whole iteration runs on the
``(n, n)`` Gram matrix: ``||v - x_i||^2 = G_ii - 2 (G c)_i + c^T G c``; only the final ``v`` touches
the ``(n, d)`` stack again.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import as_stack, centered_gram, check_count, check_positive
from stamen.server.aggregators.base import Aggregator, check_stack, register


def distances_to_combination(gram: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``||x_i - sum_j coef_j x_j||`` for every ``i`` from the Gram matrix (``coef`` sums to 1)."""
    g_coef = gram @ coef  # (n,)
    sq = np.diag(gram) - 2.0 * g_coef + coef @ g_coef
    return np.sqrt(np.maximum(sq, 0.0))


def weiszfeld_coefficients(
    gram: np.ndarray, alpha: np.ndarray, nu: float, max_iter: int, tol: float
) -> np.ndarray:
    """Convex-combination coefficients ``c`` of the smoothed Weiszfeld iterate (RFA Alg. 2)."""
    coef = alpha.copy()
    objective = float(alpha @ distances_to_combination(gram, coef))
    for _ in range(max_iter):
        dist = distances_to_combination(gram, coef)
        beta = alpha / np.maximum(nu, dist)
        coef = beta / beta.sum()
        new_objective = float(alpha @ distances_to_combination(gram, coef))
        if abs(objective - new_objective) < tol * new_objective:
            break
        objective = new_objective
    return coef


@register("geomed")
def geomed(nu: float = 1e-5, max_iter: int = 4, tol: float = 1e-6) -> Aggregator:
    """Smoothed geometric median (RFA).

    Parameters
    ----------
    nu : float, default 1e-5
        Smoothing ``nu > 0``, in the units of the updates (L2 norm): distances below ``nu`` count
        as ``nu``, which keeps the Weiszfeld weights finite at a data point.
    max_iter : int, default 4
        Weiszfeld steps ``>= 1`` (RFA's default; each is one ``(n, n)`` product here).
    tol : float, default 1e-6
        Relative decrease of the objective below which the iteration stops, ``> 0``.
    """
    nu_ = check_positive("geomed: nu", nu)
    iters = check_count("geomed: max_iter", max_iter, 1)
    tol_ = check_positive("geomed: tol", tol)

    def agg(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = check_stack(updates, weights)
        x = as_stack(updates)
        n = x.shape[0]
        alpha = np.full(n, 1.0 / n) if w is None else w / w.sum()
        coef = weiszfeld_coefficients(centered_gram(x), alpha, nu_, iters, tol_)
        return np.asarray(coef.astype(np.float32) @ x, dtype=np.float32)

    return agg
