"""What the server does with a stale update, from the ``[server]`` settings.

An update computed against version ``v`` arrives when the model is at ``t``: ``tau = t - v``.

- ``tau <= max_staleness`` (or no bound, ``max_staleness = 0``): the compensation policy corrects it
  (``direct`` leaves it as it is; ``weighted`` scales it by ``s(tau)``, the configured
  ``server.staleness`` function; ``dcasgd`` adds DC-ASGD's first-order term; ``gi`` converts it by
  gradient inversion).
- ``tau > max_staleness``: ``drop`` rejects it (counted); ``downweight`` keeps it with an extra factor
  ``max_staleness / tau``; ``convert`` applies the compensation policy (``gi`` when the configured
  one is ``direct``) to it.

The asynchronous modes also scale every update by ``s(tau)`` (FedBuff's ``s(tau) Delta``, FedAsync's
``alpha s(tau)``): :meth:`StaleHandling.async_factor`. An update the ``weighted`` policy already
scaled by ``s(tau)`` is not scaled a second time.

``dcasgd`` and ``gi`` need ``w_t`` and ``w_{t-tau}``; ``direct``, ``weighted`` and ``downweight`` need
only ``tau`` (:meth:`StaleHandling.needs_base`). The server keeps a bounded :class:`ModelHistory`:
``max_staleness + 1`` versions under ``drop``, else as many as fit its byte bound
(:meth:`StaleHandling.history_versions`); an update that needs an evicted version is refused with a
typed error naming the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stamen.server.staleness import compensation, functions
from stamen.server.staleness.compensation import CompensationPolicy, ModelVersions
from stamen.server.staleness.errors import StalenessError
from stamen.task.settings import ServerModeConfig

Weights = dict[str, np.ndarray]


class TooStale(StalenessError):
    """An update staler than ``max_staleness`` under the ``drop`` policy."""


@dataclass
class StaleHandling:
    """The run's staleness rules (see the module docstring)."""

    weight: functions.StalenessFunction
    policy: CompensationPolicy
    max_staleness: int = 0
    stale_policy: str = "drop"
    convert_policy: CompensationPolicy | None = None

    @classmethod
    def from_settings(
        cls, s: ServerModeConfig, gi_factory: Callable[[], CompensationPolicy]
    ) -> StaleHandling:
        """Build from ``[server]``; ``gi_factory`` builds the GI policy (it needs the task's model)."""
        weight = functions.create(s.staleness, **dict(s.params))
        policy = make_policy(s.compensation, s.dc_lambda, gi_factory, weight)
        convert = None
        if s.stale_policy == "convert":
            convert = gi_factory() if s.compensation == "direct" else policy
        return cls(weight, policy, s.max_staleness, s.stale_policy, convert)

    def route(self, tau: int) -> tuple[CompensationPolicy | None, float]:
        """``(policy to apply, extra weight factor)`` at staleness ``tau``; ``None``: the update is
        used as it is. :class:`TooStale` under ``drop``."""
        if tau == 0:
            return None, 1.0
        if self.max_staleness and tau > self.max_staleness:
            if self.stale_policy == "drop":
                raise TooStale(f"staleness {tau} exceeds server.max_staleness={self.max_staleness}")
            if self.stale_policy == "downweight":
                return None, self.max_staleness / tau
            assert self.convert_policy is not None
            return self.convert_policy, 1.0
        if self.max_staleness and self.stale_policy == "convert":
            return None, 1.0  # within the bound: used as it is; only staler updates are converted
        return self.policy, 1.0

    def treat(
        self,
        delta: Mapping[str, np.ndarray],
        tau: int,
        versions: ModelVersions | None,
        client: int,
        mixing: bool = False,
    ) -> tuple[Mapping[str, np.ndarray], float]:
        """``(delta to aggregate, extra weight factor)``; :class:`TooStale` under ``drop``.
        ``versions`` may be None only when :meth:`needs_base` is false. ``mixing`` (FedAsync): a
        ``weighted`` update is left unscaled, since FedAsync weighs it by ``s(tau)`` in its mixing
        weight (:meth:`async_factor`); scaling ``Delta`` instead would mix the stale base in at full
        strength."""
        policy, factor = self.route(tau)
        if policy is None or (mixing and isinstance(policy, compensation.Weighted)):
            return delta, factor
        return policy(delta, tau, versions, client=client), factor

    def needs_base(self, tau: int) -> bool:
        """Whether treating an update of staleness ``tau`` needs ``w_{t-tau}`` (``dcasgd``, ``gi``)."""
        policy, _ = self.route(tau)
        return policy is not None and policy.needs_versions

    def async_factor(self, tau: int, mixing: bool = False) -> float:
        """The scale of a treated update in the asynchronous modes: :meth:`treat`'s factor times
        ``s(tau)``; in FedBuff without ``s(tau)`` when the applied policy is ``weighted`` (it already
        scaled the update). In FedAsync (``mixing``) always with it: Xie et al.'s
        ``alpha_t = alpha * s(tau)``."""
        policy, factor = self.route(tau)
        if isinstance(policy, compensation.Weighted) and not mixing:
            return factor
        return factor * float(self.weight(tau))

    def history_versions(self) -> int | None:
        """Versions the server must keep for these rules: ``max_staleness + 1`` under ``drop``
        (staler updates are refused), else None (every version an update may name: bound the history
        by bytes)."""
        return self.max_staleness + 1 if self.max_staleness and self.stale_policy == "drop" else None


def make_policy(
    name: str,
    dc_lambda: float,
    gi_factory: Callable[[], CompensationPolicy],
    weight: functions.StalenessFunction,
) -> CompensationPolicy:
    """The registered compensation policy ``name`` (``dcasgd`` with ``lam = dc_lambda``; ``weighted``
    with the run's staleness function ``weight``)."""
    if name == "gi":
        return gi_factory()
    params: dict[str, Any] = {}
    if name == "dcasgd":
        params = {"lam": dc_lambda}
    elif name == "weighted":
        params = {"function": weight}
    return compensation.create(name, **params)
