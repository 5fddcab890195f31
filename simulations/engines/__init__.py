"""Simulation engines: ``inprocess`` (fast, single process) and ``flower`` (Flower + Ray).

Both drive the same :class:`~stamen.server.driver.RoundDriver`; they differ only in transport.
"""

from __future__ import annotations

from stamen.server.history import FederationResult, ProgressFn
from stamen.simulations.plan import SimulationPlan

ENGINES = ("inprocess", "flower")


def run_engine(
    name: str, plan: SimulationPlan, progress: ProgressFn | None = None, **kwargs: object
) -> FederationResult:
    """Run ``plan`` on the engine ``name`` (one of :data:`ENGINES`)."""
    if name == "inprocess":
        from stamen.simulations.engines.inprocess import run_inprocess
        from stamen.simulations.engines.interrupt import sigterm_as_interrupt

        with sigterm_as_interrupt():  # SIGTERM ends the run like Ctrl-C: finished rounds are kept
            return run_inprocess(plan, progress, **kwargs)
    if name == "flower":
        from stamen.simulations.engines.flower import run_flower

        return run_flower(plan, progress, **kwargs)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
