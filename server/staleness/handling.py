"""What the server does with a stale update, from the ``[server]`` settings.

An update computed against version ``v`` arrives when the model is at ``t``: ``tau = t - v``.

- ``tau <= max_staleness`` (or no bound, ``max_staleness = 0``): the compensation policy corrects it
  (``direct`` leaves it as it is; ``weighted`` scales it by ``s(tau)``; ``dcasgd`` adds DC-ASGD's
  first-order term; ``gi`` converts it by gradient inversion), and FedBuff weights it by ``s(tau)``
  (the ``staleness`` function).
- ``tau > max_staleness``: ``drop`` rejects it (counted); ``downweight`` keeps it with an extra factor
  ``max_staleness / tau``; ``convert`` applies the compensation policy (``gi`` when the configured
  one is ``direct``) to it.

The policies need ``w_t`` and ``w_{t-tau}``: the server keeps a bounded :class:`ModelHistory`
(``max_staleness + 1`` versions, or the configured bound), and an update naming an evicted version is
refused with a typed error.
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
        policy = make_policy(s.compensation, s.dc_lambda, gi_factory)
        convert = None
        if s.stale_policy == "convert":
            convert = gi_factory() if s.compensation == "direct" else policy
        return cls(weight, policy, s.max_staleness, s.stale_policy, convert)

    def treat(
        self, delta: Mapping[str, np.ndarray], tau: int, versions: ModelVersions, client: int
    ) -> tuple[Mapping[str, np.ndarray], float]:
        """``(delta to aggregate, extra weight factor)``; :class:`TooStale` under ``drop``."""
        if tau == 0:
            return delta, 1.0
        if self.max_staleness and tau > self.max_staleness:
            if self.stale_policy == "drop":
                raise TooStale(f"staleness {tau} exceeds server.max_staleness={self.max_staleness}")
            if self.stale_policy == "downweight":
                return delta, self.max_staleness / tau
            assert self.convert_policy is not None
            return self.convert_policy(delta, tau, versions, client=client), 1.0
        if self.max_staleness and self.stale_policy == "convert":
            return delta, 1.0  # within the bound: used as it is; only staler updates are converted
        return self.policy(delta, tau, versions, client=client), 1.0

    def history_size(self, default: int) -> int:
        """Versions the server must keep for these rules (``max_staleness + 1``, else ``default``)."""
        return self.max_staleness + 1 if self.max_staleness else default


def make_policy(
    name: str, dc_lambda: float, gi_factory: Callable[[], CompensationPolicy]
) -> CompensationPolicy:
    """The registered compensation policy ``name`` (``dcasgd`` with ``lam = dc_lambda``)."""
    if name == "gi":
        return gi_factory()
    params: dict[str, Any] = {"lam": dc_lambda} if name == "dcasgd" else {}
    return compensation.create(name, **params)
