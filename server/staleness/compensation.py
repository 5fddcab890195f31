"""Staleness compensation policies: a stale delta in, the delta to aggregate out.

A policy is a callable ``(delta, tau, versions=None, *, client=None) -> delta``:

- ``delta``: the client's update ``w_local - w_{t-tau}`` as ``{name: float32 array}`` (our sign
  convention, delta = local - global, DESIGN.md §2), computed against the model version
  ``t - tau``;
- ``tau``: the staleness, an ``int >= 0``;
- ``versions``: the model versions the policy needs (:class:`ModelVersions`: the current model
  ``w_t`` and the stale base ``w_{t-tau}``), required when ``policy.needs_versions`` is true;
- ``client``: an optional stable client id (only policies that keep per-client state use it).

Every policy returns a new dict (inputs are never modified) with the same names, shapes and
``float32`` dtype, and is the identity at ``tau = 0``.

| name | what it aggregates | needs versions | file |
|---|---|---|---|
| ``direct`` | ``delta`` unchanged | no | here |
| ``weighted`` | ``s(tau) * delta`` (default ``s = 2^(-tau/20)``) | no | here |
| ``dcasgd`` | ``delta - lam * delta * delta * (w_t - w_{t-tau})`` | yes | ``dcasgd.py`` |
| ``gi`` | gradient-inversion conversion (Wang & Gao) | yes | ``gi_conversion.py`` |

These are the ``dc`` branches 2, 4, 3 and 1 of the staleness paper's code
(pittisl/FL-with-intertwined-heterogeneity ``fixed.py`` at commit 4ec51ab).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from stamen.protocols import ValidationError
from stamen.server.staleness import functions
from stamen.server.staleness.errors import check_tau, check_version

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelVersions:
    """The model versions a policy may need.

    Attributes
    ----------
    current : mapping of str to ndarray
        ``w_t``, the model the server holds now.
    stale_base : mapping of str to ndarray
        ``w_{t-tau}``, the model the stale update was computed against.
    current_version : int
        ``t``, the version of ``current`` (``>= 0``; stateful policies such as the GI switch-back
        rule schedule by it).
    """

    current: Mapping[str, np.ndarray]
    stale_base: Mapping[str, np.ndarray]
    current_version: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "current_version", check_version(self.current_version, "current_version"))


class CompensationPolicy(Protocol):
    """``(delta, tau, versions=None, *, client=None) -> delta`` (see the module docstring)."""

    name: ClassVar[str]
    needs_versions: ClassVar[bool]

    def __call__(
        self,
        delta: Mapping[str, np.ndarray],
        tau: int,
        versions: ModelVersions | None = None,
        *,
        client: int | None = None,
    ) -> Weights:
        """The delta to aggregate in place of the stale ``delta``."""
        ...


_REGISTRY: dict[str, type[Any]] = {}


def register(name: str, *, needs_versions: bool) -> Callable[[type[Any]], type[Any]]:
    """Register a policy class under ``name`` (its constructor keywords are its parameters)."""

    def deco(cls: type[Any]) -> type[Any]:
        if name in _REGISTRY:
            raise ValueError(f"compensation policy {name!r} is already registered")
        cls.name, cls.needs_versions = name, needs_versions
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Registered policy names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, **params: Any) -> CompensationPolicy:
    """Build the policy ``name`` with ``params``; unknown names or parameters raise ``ValueError``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown compensation policy {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[name]
    allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise ValueError(f"compensation policy {name!r}: unknown parameter(s) {unknown}; allowed: {listed}")
    policy: CompensationPolicy = cls(**params)
    return policy


def as_float32(delta: Mapping[str, np.ndarray]) -> Weights:
    """A fresh ``float32`` copy of ``delta``; ``ValidationError`` if empty or not finite."""
    if not delta:
        raise ValidationError("a delta must hold at least one tensor")
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in delta.items()}
    bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValidationError(f"delta has non-finite values in {bad}")
    return out


def check_versions(delta: Mapping[str, np.ndarray], versions: ModelVersions | None, policy: str) -> None:
    """``versions`` present and holding every tensor of ``delta`` with the same shape."""
    if versions is None:
        raise ValueError(f"compensation policy {policy!r} needs the current and the stale base model")
    for which, weights in (("current", versions.current), ("stale_base", versions.stale_base)):
        for key, value in delta.items():
            if key not in weights:
                raise ValidationError(f"{policy}: {which} model has no tensor {key!r}")
            if np.shape(weights[key]) != np.shape(value):
                shape = np.shape(weights[key])
                raise ValidationError(
                    f"{policy}: {which}[{key!r}] has shape {shape}, delta {np.shape(value)}"
                )


@register("direct", needs_versions=False)
@dataclass(frozen=True)
class Direct:
    """Aggregate the stale delta as it is (``dc = 2`` in the staleness paper's code)."""

    name: ClassVar[str]
    needs_versions: ClassVar[bool]

    def __call__(
        self,
        delta: Mapping[str, np.ndarray],
        tau: int,
        versions: ModelVersions | None = None,
        *,
        client: int | None = None,
    ) -> Weights:
        check_tau(tau)
        return as_float32(delta)


def _default_function() -> functions.StalenessFunction:
    return functions.create("exponential")


@register("weighted", needs_versions=False)
@dataclass(frozen=True)
class Weighted:
    """Aggregate ``s(tau) * delta``.

    Parameters
    ----------
    function : StalenessFunction or str, default ``exponential`` (``2^(-tau/20)``)
        A staleness function, or the registered name of one (built with ``function_params``).
    function_params : mapping, default empty
        Parameters of the named function, e.g. ``{"a": 10, "b": 4}`` for ``hinge``.

    Notes
    -----
    With the default this is ``dc = 4`` of the staleness paper's code (``fixed.py`` at 4ec51ab:
    ``delta * np.exp2(-delay / 20)``).
    """

    name: ClassVar[str]
    needs_versions: ClassVar[bool]
    function: functions.StalenessFunction | str = field(default_factory=_default_function)
    function_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.function, str):
            object.__setattr__(self, "function", functions.create(self.function, **self.function_params))
        elif self.function_params:
            raise ValueError("weighted: function_params apply only when function is given by name")

    def __call__(
        self,
        delta: Mapping[str, np.ndarray],
        tau: int,
        versions: ModelVersions | None = None,
        *,
        client: int | None = None,
    ) -> Weights:
        assert not isinstance(self.function, str)  # resolved in __post_init__
        scale = np.float32(self.function(check_tau(tau)))
        return {k: v * scale for k, v in as_float32(delta).items()}
