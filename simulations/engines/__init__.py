"""Simulation engines: ``inprocess`` (fast, single process) and ``flower`` (Flower + Ray)."""

from __future__ import annotations

from stamen.server.config import ServerConfig
from stamen.server.federation import FederationResult
from stamen.server.history import ProgressFn

ENGINES = ("inprocess", "flower")


def run_engine(
    name: str, cfg: ServerConfig, progress: ProgressFn | None = None, **kwargs: object
) -> FederationResult:
    """Run ``cfg`` on the engine ``name`` (one of :data:`ENGINES`)."""
    if name == "inprocess":
        from stamen.simulations.engines.inprocess import run_inprocess

        return run_inprocess(cfg, progress, **kwargs)
    if name == "flower":
        from stamen.simulations.engines.flower import run_flower

        return run_flower(cfg, progress, **kwargs)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
