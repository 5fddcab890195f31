"""Per-client state that persists across rounds (error-feedback residuals, privacy step counts).

The in-process engine keeps one :class:`ClientState` per partition id in memory; the ClientApp keeps
it in Flower's ``context.state`` (an ``ArrayRecord`` plus a ``MetricRecord``), which the SuperNode
persists across messages of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientState:
    """Mutable per-client memory.

    Attributes
    ----------
    arrays : dict[str, np.ndarray]
        Named arrays, e.g. ``"ef/<tensor>"`` error-feedback residuals (float32).
    scalars : dict[str, float]
        Named numbers, e.g. ``"dp/steps"`` (DP-SGD steps taken so far).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
