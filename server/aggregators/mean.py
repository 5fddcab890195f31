"""``mean`` (unweighted) and ``fedavg`` (sample-weighted mean) aggregation.

FedAvg: McMahan et al., AISTATS 2017, the server step ``w <- sum_k (n_k / n) w_k``; on updates,
``Delta = sum_k (n_k / n) Delta_k``.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators.base import Aggregator, check_stack, register


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


@register("mean")
def mean() -> Aggregator:
    """Unweighted mean; ignores the weights."""

    def agg(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        del weights
        return weighted_mean(updates, None)

    return agg
