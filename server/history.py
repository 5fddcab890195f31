"""Per-round records produced by the server and written to results.json by the engines."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HIER_COUNTS = ("hier_regions", "hier_bytes_root")
HIER_TIMES = ("hier_latency_edge_s", "hier_latency_root_s")


def hierarchy_fields(metrics: dict[str, float]) -> dict[str, Any]:
    """The :class:`RoundRecord` fields of a rule's ``round_metrics()`` (none for a flat rule)."""
    out: dict[str, Any] = {k: int(metrics[k]) for k in HIER_COUNTS if k in metrics}
    out.update({k: float(metrics[k]) for k in HIER_TIMES if k in metrics})
    return out


@dataclass(frozen=True)
class RoundRecord:
    """What one round measured.

    Attributes
    ----------
    round : int
        Round number, ``>= 0`` (0 may record the initial model).
    accuracy, loss : float
        Centralized test accuracy in ``[0, 1]`` and mean loss; NaN when the round was not evaluated
        (``None`` is accepted and stored as NaN).
    bytes_up, bytes_down : int
        Bytes really sent client -> server and server -> client in this round, ``>= 0``.
    epsilon : float or None
        Cumulative differential-privacy epsilon after this round; ``None`` without DP.
    rejected : int
        Client updates the server rejected this round, ``>= 0``.
    wall_s : float
        Wall-clock seconds this round took, ``>= 0``.
    sim_time_s : float
        Simulated seconds since the start of the run when the round closed (a simulation with a
        client timing model); NaN otherwise.
    staleness_max, staleness_mean : int, float
        Largest and mean staleness ``tau`` (versions) of the updates the round used; 0 and NaN when
        every update was fresh or none was used.
    hier_regions, hier_bytes_root : int
        Hierarchical aggregation (``docs/hierarchy.md``): regions that forwarded an update and the
        envelope bytes into the root (compare ``bytes_up``, what a flat root receives); 0 for a
        flat run.
    hier_latency_edge_s, hier_latency_root_s : float
        Simulated seconds of level 1 (slowest client of the slowest region; NaN without a client
        timing model) and level 2 (region -> root link model); NaN for a flat run.
    """

    round: int
    accuracy: float
    loss: float
    bytes_up: int
    bytes_down: int
    epsilon: float | None
    rejected: int
    wall_s: float
    sim_time_s: float = math.nan
    staleness_max: int = 0
    staleness_mean: float = math.nan
    hier_regions: int = 0
    hier_bytes_root: int = 0
    hier_latency_edge_s: float = math.nan
    hier_latency_root_s: float = math.nan

    def __post_init__(self) -> None:
        # Normalize numpy scalars so JSON/CSV get plain Python numbers.
        for name in ("round", "bytes_up", "bytes_down", "rejected", "staleness_max", *HIER_COUNTS):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"RoundRecord.{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("accuracy", "loss", "wall_s", "sim_time_s", "staleness_mean", *HIER_TIMES):
            value = getattr(self, name)
            object.__setattr__(self, name, math.nan if value is None else float(value))
        if self.epsilon is not None:
            object.__setattr__(self, "epsilon", float(self.epsilon))
        if not self.wall_s >= 0:
            raise ValueError(f"RoundRecord.wall_s must be >= 0, got {self.wall_s!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


ProgressFn = Callable[[RoundRecord], None]


def last_evaluated(rounds: Sequence[RoundRecord]) -> RoundRecord | None:
    """The last round that has an accuracy, if any."""
    for rec in reversed(rounds):
        if not math.isnan(rec.accuracy):
            return rec
    return None


@dataclass
class FederationResult:
    """Per-round records and the final global weights of a run.

    ``extra`` is written to results.json (e.g. ``"evaluation"`` in peer mode); ``stopped`` says why a
    run ended before its last round (``"interrupted"``, ``"privacy budget exhausted"``), else None.
    """

    rounds: list[RoundRecord]
    weights: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
