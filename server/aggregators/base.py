"""Aggregator interface and registry.

An aggregator is a pure callable over a float32 ``(n, d)`` stack of client updates (one row per
client, rows in cohort order) and optional non-negative weights ``(n,)``; it returns the ``(d,)``
aggregate. The registry hands out :class:`Rule` objects: the callable plus a typed contract with the
round driver — :meth:`Rule.begin_round` receives a :class:`RoundContext` (the model layout and base,
for rules that vote per layer or correct LoRA factors), and :class:`RuleTraits` declare what central
DP and the server step need to know (L2 sensitivity, a required server learning rate, relay-only).
Nothing is discovered by probing attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stamen.protocols import TensorInfo


class Aggregator(Protocol):
    """``(updates (n, d) float32, weights (n,) | None) -> (d,) float32``."""

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Aggregate the stack."""
        ...


@dataclass(frozen=True)
class RoundContext:
    """What a rule may know about the round beyond the stack.

    Attributes
    ----------
    round : int
        Server round (1-based) or, in asynchronous modes, the model version being produced.
    table : tuple of TensorInfo
        The model's tensors in stack-column order.
    base : ndarray, shape (d,)
        The global weights the round's deltas apply to, flattened in table order (float32).
    senders : tuple of str
        The client key of each row of the stack (empty when the caller has none).
    trip_s : tuple of float
        Each row's simulated trip, dispatch to arrival, in seconds (NaN or empty without a
        client timing model).
    """

    round: int
    table: tuple[TensorInfo, ...]
    base: np.ndarray
    senders: tuple[str, ...] = ()
    trip_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class RuleTraits:
    """What a rule declares to the driver and to central DP.

    Attributes
    ----------
    l2_sensitivity : callable or None
        ``(n, clip) -> S``: the rule's L2 sensitivity for ``n`` rows clipped to ``clip`` (central DP
        refuses a rule without it).
    required_server_lr : float or None
        The server learning rate the rule's output assumes (e.g. FRL and Bristle return
        ``new - base``: 1.0); the run is refused with another one.
    relay_only : bool
        The server only relays (Bristle's peer mode): nothing is aggregated.
    releases_empty : bool
        The rule releases (and counts) a round with no accepted update (central DP); otherwise such
        a round leaves the model unchanged.
    """

    l2_sensitivity: Callable[[int, float], float] | None = None
    required_server_lr: float | None = None
    relay_only: bool = False
    releases_empty: bool = False


class Rule:
    """Base of every registered aggregation rule (see the module docstring)."""

    traits: RuleTraits = RuleTraits()

    def begin_round(self, ctx: RoundContext) -> None:
        """Called by the driver before the round's aggregation; a no-op unless overridden."""
        del ctx

    def epsilon(self) -> float | None:
        """Cumulative privacy spent by this rule's releases (central DP), else None."""
        return None

    def round_metrics(self) -> dict[str, float]:
        """What the rule measured in its last call, for the round record (empty unless overridden)."""
        return {}

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Aggregate the ``(n, d)`` stack into ``(d,)``."""
        raise NotImplementedError


class FunctionRule(Rule):
    """A plain ``(updates, weights) -> (d,)`` function as a :class:`Rule` with declared traits."""

    def __init__(self, fn: Aggregator, traits: RuleTraits | None = None) -> None:
        self.fn = fn
        self.traits = traits or RuleTraits()
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Apply the function."""
        return self.fn(updates, weights)

    def __repr__(self) -> str:
        return f"FunctionRule({self.__name__})"


def as_rule(obj: Aggregator | Rule) -> Rule:
    """``obj`` itself when it is a :class:`Rule`, else wrapped with default traits."""
    return obj if isinstance(obj, Rule) else FunctionRule(obj)


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


def create(name: str, **params: Any) -> Rule:
    """Build the rule ``name`` with ``params``; unknown names or params raise ``ValueError``."""
    make = rule_factory(name)
    try:
        return as_rule(make(**params))
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
