"""Per-round records produced by the server and written to results.json by the engines."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RoundRecord:
    """One row of results.json's ``rounds``; accuracy/loss are NaN where not evaluated."""

    round: int
    accuracy: float
    loss: float
    bytes_up: int
    bytes_down: int
    epsilon: float | None
    rejected: int
    wall_s: float

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
