"""Aggregator interface and registry.

An aggregator is a pure callable over a float32 ``(n, d)`` stack of client updates (one row per
client, rows sorted by client id) and optional non-negative weights ``(n,)``; it returns the ``(d,)``
aggregate. Robust rules, pre-aggregators and streaming variants plug into the same registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Aggregator(Protocol):
    """``(updates (n, d) float32, weights (n,) | None) -> (d,) float32``."""

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Aggregate the stack."""
        ...


AggregatorFactory = Callable[..., Aggregator]
_REGISTRY: dict[str, AggregatorFactory] = {}


def register(name: str) -> Callable[[AggregatorFactory], AggregatorFactory]:
    """Register an aggregator factory ``(**params) -> Aggregator`` under ``name``."""

    def deco(make: AggregatorFactory) -> AggregatorFactory:
        if name in _REGISTRY:
            raise ValueError(f"aggregator {name!r} is already registered")
        _REGISTRY[name] = make
        return make

    return deco


def rule_factory(name: str) -> AggregatorFactory:
    """The registered factory of rule ``name`` (``ValueError`` naming the rules for an unknown one)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown aggregation rule {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def create(name: str, **params: Any) -> Aggregator:
    """Build the aggregator ``name`` with ``params``; unknown names or params raise ``ValueError``."""
    make = rule_factory(name)
    try:
        return make(**params)
    except TypeError as exc:  # unexpected keyword -> a clear, typed error naming the rule
        raise ValueError(f"invalid parameters for aggregation rule {name!r}: {exc}") from exc


def available() -> list[str]:
    """Registered rule names, sorted."""
    return sorted(_REGISTRY)


def check_stack(updates: np.ndarray, weights: np.ndarray | None) -> np.ndarray | None:
    """Validate the common input contract; return weights as float64 or ``None``."""
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) stack, got shape {updates.shape}")
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (updates.shape[0],):
        raise ValueError(f"weights must have shape ({updates.shape[0]},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w
