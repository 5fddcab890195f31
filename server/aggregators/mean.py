"""``mean`` (unweighted) and ``fedavg`` (sample-weighted mean) aggregation.

FedAvg: McMahan et al., AISTATS 2017, the server step ``w <- sum_k (n_k / n) w_k``; on updates,
``Delta = sum_k (n_k / n) Delta_k``. Only ``mean`` declares an L2 sensitivity for central DP:
``fedavg``'s data-size weights give one client up to ~2C of influence (no useful bound).
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators.base import Aggregator, FunctionRule, Rule, RuleTraits, check_stack, register


def weighted_mean(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of the rows of ``updates`` (uniform when ``weights`` is None).

    One float32 BLAS matrix-vector product (no float64 copy of a possibly huge stack).
    """
    w = check_stack(updates, weights)
    if w is None:
        w = np.ones(updates.shape[0], dtype=np.float64)
    w = w / w.sum()
    return np.asarray(w.astype(np.float32) @ updates, dtype=np.float32)


@register("fedavg")
def fedavg() -> Aggregator:
    """Sample-weighted mean (weights = clients' ``num-examples``)."""
    return weighted_mean


def mean_l2_sensitivity(n: int, clip: float) -> float:
    """L2 sensitivity of the mean of a cohort of nominal size ``n`` whose rows are clipped to ``clip``.

    ``C / n`` under add/remove-one-client adjacency for the fixed-denominator estimator
    ``Σ_k clip(Δ_k) / n`` (McMahan et al., ICLR 2018, Lemma 1 with ``w_k = 1``, ``qW = n``): the
    added client contributes one row of norm <= C and the denominator does not move. (Under
    replace-one adjacency it would be ``2C / n``.) Central DP reads it via
    :func:`stamen.server.privacy.central.declared_sensitivity`.
    """
    if n < 1 or not clip > 0:
        raise ValueError(f"n must be >= 1 and clip > 0, got n={n}, clip={clip}")
    return float(clip) / n


def unweighted_mean(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of the rows; ignores the weights."""
    del weights
    return weighted_mean(updates, None)


@register("mean")
def mean() -> Rule:
    """Unweighted mean. Declares its L2 sensitivity (see :func:`mean_l2_sensitivity`)."""
    return FunctionRule(unweighted_mean, RuleTraits(l2_sensitivity=mean_l2_sensitivity))
