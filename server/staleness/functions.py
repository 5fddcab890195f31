"""Staleness weights ``s(tau)``: how much an update computed ``tau`` model versions ago still counts.

``tau`` = current model version - the version the update was computed against (an ``int >= 0``).
Every function here is ``1`` at ``tau = 0``, lies in ``(0, 1]`` (``exponential`` underflows to 0.0
only past ``tau ~ 1074 * scale``) and is non-increasing in ``tau``.

| name | formula | default parameters | reference |
|---|---|---|---|
| ``constant`` | ``1`` | — | FedAsync, Xie et al. 2019 (arXiv 1903.03934) |
| ``polynomial`` | ``(1 + tau)^(-a)`` | ``a = 0.5`` | FedAsync |
| ``hinge`` | ``1`` if ``tau <= b`` else ``1 / (a (tau - b) + 1)`` | ``a = 10, b = 4`` | FedAsync |
| ``fedbuff`` | ``1 / sqrt(1 + tau)`` | — | FedBuff, Nguyen et al. 2022 (arXiv 2106.06639) |
| ``exponential`` | ``base^(-tau / scale)`` | ``base = 2, scale = 20`` | Wang & Gao 2025 (arXiv 2309.13536) |

The FedAsync defaults are the paper's typical settings as recorded in our research notes
(``shared/research/papers.md`` §5, not re-checked against the PDF). ``exponential`` with its
defaults is ``2^(-tau/20)``, the weighted-aggregation baseline of the staleness paper's code
(pittisl/FL-with-intertwined-heterogeneity ``fixed.py`` at commit 4ec51ab, branch ``dc == 4``:
the stale delta times ``np.exp2(-delay / 20)``).

Build one with :func:`create` (``create("hinge", a=10, b=4)``); unknown names and parameters are
refused with one line naming them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from stamen.server.staleness.errors import check_tau


class StalenessFunction(Protocol):
    """``s(tau) -> float`` in ``(0, 1]``, non-increasing, ``s(0) = 1``."""

    name: ClassVar[str]

    def __call__(self, tau: int) -> float:
        """Weight of an update that is ``tau`` versions stale (``tau`` an ``int >= 0``)."""
        ...


_REGISTRY: dict[str, type[Any]] = {}


def register(name: str) -> Callable[[type[Any]], type[Any]]:
    """Register a frozen dataclass implementing :class:`StalenessFunction` under ``name``."""

    def deco(cls: type[Any]) -> type[Any]:
        if name in _REGISTRY:
            raise ValueError(f"staleness function {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Registered staleness function names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, **params: Any) -> StalenessFunction:
    """Build the staleness function ``name`` with ``params``.

    Raises
    ------
    ValueError
        One line naming an unknown function, an unknown parameter, or a parameter of the wrong
        type or range.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown staleness function {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise ValueError(f"staleness function {name!r}: unknown parameter(s) {unknown}; allowed: {listed}")
    fn: StalenessFunction = cls(**params)
    return fn


def params_of(fn: StalenessFunction) -> dict[str, float]:
    """The parameters of ``fn`` as a plain dict (for records)."""
    return dataclasses.asdict(fn)  # type: ignore[call-overload]


def _real(owner: str, key: str, value: object, *, low: float, strict: bool) -> float:
    """``value`` as a finite float above ``low`` (``> low`` if ``strict``, else ``>=``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"staleness function {owner!r}: {key} must be a number, got {value!r}")
    out = float(value)
    ok = math.isfinite(out) and (out > low if strict else out >= low)
    if not ok:
        raise ValueError(
            f"staleness function {owner!r}: {key} must be {'>' if strict else '>='} {low}, got {value!r}"
        )
    return out


@register("constant")
@dataclass(frozen=True)
class Constant:
    """``s(tau) = 1``: every update counts fully (FedAsync's constant function)."""

    name: ClassVar[str]

    def __call__(self, tau: int) -> float:
        check_tau(tau)
        return 1.0


@register("polynomial")
@dataclass(frozen=True)
class Polynomial:
    """``s(tau) = (1 + tau)^(-a)`` (FedAsync), ``a >= 0`` (default 0.5; ``a = 0`` is constant)."""

    name: ClassVar[str]
    a: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _real("polynomial", "a", self.a, low=0.0, strict=False))

    def __call__(self, tau: int) -> float:
        return float((1.0 + check_tau(tau)) ** -self.a)


@register("hinge")
@dataclass(frozen=True)
class Hinge:
    """``s(tau) = 1`` for ``tau <= b``, else ``1 / (a (tau - b) + 1)`` (FedAsync).

    ``a >= 0`` is the decay slope past the hinge (default 10), ``b >= 0`` the staleness tolerated
    at full weight (default 4).
    """

    name: ClassVar[str]
    a: float = 10.0
    b: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _real("hinge", "a", self.a, low=0.0, strict=False))
        object.__setattr__(self, "b", _real("hinge", "b", self.b, low=0.0, strict=False))

    def __call__(self, tau: int) -> float:
        t = check_tau(tau)
        return 1.0 if t <= self.b else 1.0 / (self.a * (t - self.b) + 1.0)


@register("fedbuff")
@dataclass(frozen=True)
class FedBuff:
    """``s(tau) = 1 / sqrt(1 + tau)`` (FedBuff's staleness scaling; ``polynomial`` with ``a = 0.5``)."""

    name: ClassVar[str]

    def __call__(self, tau: int) -> float:
        return 1.0 / math.sqrt(1.0 + check_tau(tau))


@register("exponential")
@dataclass(frozen=True)
class Exponential:
    """``s(tau) = base^(-tau / scale)``; defaults ``base = 2``, ``scale = 20`` give ``2^(-tau/20)``.

    ``base > 1`` (use ``constant`` for no decay) and ``scale > 0`` versions: the weight halves
    every ``scale`` versions when ``base = 2``.
    """

    name: ClassVar[str]
    base: float = 2.0
    scale: float = 20.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _real("exponential", "base", self.base, low=1.0, strict=True))
        object.__setattr__(self, "scale", _real("exponential", "scale", self.scale, low=0.0, strict=True))

    def __call__(self, tau: int) -> float:
        return float(self.base ** (-check_tau(tau) / self.scale))
