"""Attack interfaces, registries and the choice of malicious clients.

Two kinds of simulated attackers:

* **update attacks** (omniscient, server-side simulation): ``attack(honest, num_malicious, rng)`` gets
  this round's honest decoded updates ``(h, d)`` and returns the ``(num_malicious, d)`` float32 rows
  the malicious clients submit instead of their own. An :class:`OwnUpdateAttack` also receives
  ``own=`` the malicious clients' normally trained rows (e.g. sign flipping of one's own update); one
  with a ``pool_size`` gets, instead, the updates of that many malicious partitions (drawn from all
  attackers) trained from the round's global model by the adversary (FRL's ``rank_reversal``; see
  :mod:`stamen.simulations.adversary`).
* **data attacks** (client-side): ``attack(x, y, num_classes, rng) -> (x', y')`` poisons a malicious
  client's training partition before it trains.

An attack never inspects the defense; adaptive attacks take their target as parameters.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np

from stamen.server.aggregators.base import RoundContext


class UpdateAttack(Protocol):
    """``(honest (h, d), num_malicious, rng) -> (num_malicious, d) float32``."""

    def __call__(self, honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
        """Forge the malicious rows of one round."""
        ...


class OwnUpdateAttack:
    """An update attack that also receives the attackers' own rows (``own=``, ``(m, d)``).

    ``pool_size > 0`` asks the adversary for the updates of that many malicious partitions (drawn
    per round from all attackers, trained from the round's model) instead of the round's own rows;
    :meth:`begin_round` receives the model layout (e.g. which columns are FRL score tensors).
    """

    pool_size: int = 0

    def begin_round(self, ctx: RoundContext) -> None:
        """Called before the attack forges a round's rows; a no-op unless overridden."""
        del ctx

    def __call__(
        self, honest: np.ndarray, num_malicious: int, rng: np.random.Generator, own: np.ndarray | None = None
    ) -> np.ndarray:
        """Forge the malicious rows of one round."""
        raise NotImplementedError


class DataAttack(Protocol):
    """``(x, y, num_classes, rng) -> (x', y')``; never modifies its inputs."""

    def __call__(
        self, x: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Poison one client's training data."""
        ...


AttackKind = Literal["update", "data"]
_REGISTRY: dict[str, tuple[AttackKind, Callable[..., Any]]] = {}


def _register(name: str, kind: AttackKind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} is already registered")
        _REGISTRY[name] = (kind, factory)
        return factory

    return deco


def register_update_attack(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a factory ``(**params) -> UpdateAttack`` under ``name``."""
    return _register(name, "update")


def register_data_attack(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a factory ``(**params) -> DataAttack`` under ``name``."""
    return _register(name, "data")


def attack_type(kind: str) -> AttackKind:
    """``"update"`` or ``"data"``; ``ValueError`` for an unknown attack."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown attack {kind!r}; available: {', '.join(available_attacks())}")
    return _REGISTRY[kind][0]


def _create(kind: str, expected: AttackKind, params: dict[str, Any]) -> Any:
    if attack_type(kind) != expected:
        raise ValueError(f"attack {kind!r} is a {attack_type(kind)} attack, not an {expected} attack")
    try:
        return _REGISTRY[kind][1](**params)
    except TypeError as exc:  # unexpected keyword -> a clear, typed error naming the attack
        takes = ", ".join(inspect.signature(_REGISTRY[kind][1]).parameters) or "none"
        given = ", ".join(sorted(params))
        raise ValueError(f"invalid parameters for attack {kind!r} ({given}); it takes: {takes}") from exc


def create_update_attack(kind: str, **params: Any) -> UpdateAttack:
    """Build the update attack ``kind``; unknown kinds or params raise ``ValueError``."""
    return _create(kind, "update", params)


def create_data_attack(kind: str, **params: Any) -> DataAttack:
    """Build the data attack ``kind``; unknown kinds or params raise ``ValueError``."""
    return _create(kind, "data", params)


def available_attacks() -> list[str]:
    """Registered attack names (both kinds), sorted."""
    return sorted(_REGISTRY)


def malicious_clients(num_clients: int, fraction: float, seed: int) -> list[int]:
    """Sorted ids of ``floor(fraction * num_clients)`` clients drawn uniformly without replacement.

    The draw is ``np.random.default_rng([seed, 0x5EED_BAD]).choice`` (its own stream, so it does not
    correlate with the seed's other uses); a 1e-9 guard makes ``0.3 * 10`` count as 3.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0:
        raise ValueError(f"num_clients must be an integer >= 0, got {num_clients!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"attack fraction must be in [0, 1), got {fraction!r}")
    count = math.floor(fraction * num_clients + 1e-9)
    rng = np.random.default_rng([seed, 0x5EEDBAD])
    return sorted(int(i) for i in rng.choice(num_clients, size=count, replace=False))


def check_honest(honest: np.ndarray, num_malicious: int) -> np.ndarray:
    """Validate an update attack's input; return the honest stack as float32 ``(h, d)``."""
    x = np.asarray(honest, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"honest updates must be a non-empty (h, d) stack, got shape {x.shape}")
    if (
        isinstance(num_malicious, bool)
        or not isinstance(num_malicious, (int, np.integer))
        or num_malicious < 0
    ):
        raise ValueError(f"num_malicious must be an integer >= 0, got {num_malicious!r}")
    return x


def repeat_row(row: np.ndarray, num_malicious: int) -> np.ndarray:
    """``num_malicious`` identical float32 copies of ``row`` (colluding attackers send one vector)."""
    return np.repeat(np.asarray(row, dtype=np.float32)[None, :], num_malicious, axis=0)


def as_number(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite float (``> 0`` when ``positive``); ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out) or (positive and out <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return out
