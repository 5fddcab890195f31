"""Scenario: a simulation's settings — the run :class:`~stamen.task.settings.Settings` plus the
simulation-only ``[attack]`` section — read once from TOML into frozen, self-validating dataclasses.

The actual number of attackers (``attack.fraction``) and the number the defense *assumes*
(``aggregation.assumed_byzantine`` etc.) are separate knobs. See :mod:`stamen.task.settings` for the
format, the ``--set`` syntax and every other section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from stamen.simulations.engine_config import EngineConfig
from stamen.simulations.timing import TimingConfig
from stamen.task.settings import Settings
from stamen.task.settings_base import Scalar, _Config, _f
from stamen.task.settings_load import apply_overrides as settings_overrides
from stamen.task.settings_load import builtin_scenarios, load_settings

__all__ = ["AttackConfig", "Scenario", "apply_overrides", "builtin_scenarios", "load_scenario"]


@dataclass(frozen=True)
class AttackConfig(_Config):
    """``[attack]``: the attack actually run, the share of attacking clients in ``[0, 1)``, and its
    parameters (every other key, checked by the attack registry). ``malicious_minority`` redraws a
    round's cohort until fewer than half of it are attackers (FRL's official sampler)."""

    SECTION: ClassVar[str] = "attack"
    EXTRAS: ClassVar[str | None] = "params"
    kind: str = _f("none", nonempty=True)
    fraction: float = _f(0.0, ge=0.0, lt=1.0)
    malicious_minority: bool = True
    params: Mapping[str, Scalar] = _f(factory=dict)

    def _check(self) -> None:
        if self.kind == "none" and self.fraction > 0:
            raise ValueError(f"attack.fraction={self.fraction} needs attack.kind other than 'none'")


@dataclass(frozen=True)
class Scenario(Settings):
    """A whole simulation: the run settings plus the simulated adversary (``[attack]``) and the
    simulated clients' timing (``[timing]``: speeds, bandwidths, availability, drop-outs) and how the
    in-process engine runs them (``[engine]``: batching, worker processes, device)."""

    attack: AttackConfig = field(default_factory=AttackConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


def load_scenario(name_or_path: str, overrides: Sequence[str] = ()) -> Scenario:
    """Load a built-in scenario by name (``"demo"``) or a ``.toml`` file, then apply overrides.

    Raises
    ------
    ValueError
        For an unknown built-in name, a missing or malformed file, or an invalid setting.
    """
    scenario: Scenario = load_settings(name_or_path, overrides, Scenario)
    return scenario


def apply_overrides(base: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """:func:`stamen.task.settings_load.apply_overrides` on a scenario tree (``[attack]`` allowed)."""
    return settings_overrides(base, overrides, Scenario)
