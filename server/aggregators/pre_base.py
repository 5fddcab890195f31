"""Pre-aggregator interface and registry.

A pre-aggregator maps the round's ``(n, d)`` float32 stack and optional weights ``(n,)`` to a new
stack ``(m, d)`` and weights ``(m,) | None`` that any aggregation rule then consumes
(``updates -> pre_1 -> ... -> pre_k -> rule``, see :mod:`stamen.server.aggregators.compose`).
It never modifies its input in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class PreAggregator(Protocol):
    """``(updates (n, d), weights (n,) | None) -> (updates' (m, d), weights' (m,) | None)``."""

    def __call__(
        self, updates: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Transform the stack."""
        ...


PreAggregatorFactory = Callable[..., PreAggregator]
_PRE_REGISTRY: dict[str, PreAggregatorFactory] = {}


def register_pre(name: str) -> Callable[[PreAggregatorFactory], PreAggregatorFactory]:
    """Register a pre-aggregator factory ``(**params) -> PreAggregator`` under ``name``."""

    def deco(factory: PreAggregatorFactory) -> PreAggregatorFactory:
        if name in _PRE_REGISTRY:
            raise ValueError(f"pre-aggregator {name!r} is already registered")
        _PRE_REGISTRY[name] = factory
        return factory

    return deco


def pre_factory(name: str) -> PreAggregatorFactory:
    """The registered factory of ``name`` (``ValueError`` for an unknown name)."""
    if name not in _PRE_REGISTRY:
        raise ValueError(f"unknown pre-aggregator {name!r}; available: {', '.join(available_pre())}")
    return _PRE_REGISTRY[name]


def create_pre(name: str, **params: Any) -> PreAggregator:
    """Build the pre-aggregator ``name``; unknown names or params raise ``ValueError``."""
    factory = pre_factory(name)
    try:
        return factory(**params)
    except TypeError as exc:  # unexpected keyword -> a clear, typed error naming the stage
        raise ValueError(f"invalid parameters for pre-aggregator {name!r}: {exc}") from exc


def available_pre() -> list[str]:
    """Registered pre-aggregator names, sorted."""
    return sorted(_PRE_REGISTRY)
