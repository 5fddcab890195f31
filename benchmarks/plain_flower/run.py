"""Run the plain app with Flower's simulation engine and time it.

Same Ray backend configuration as stamen's ``--engine flower`` (a private local Ray instance of
``num_cpus`` CPUs, one CPU per ClientApp actor). Ray's actors import ``plain_flower`` by name, so
the folder above it is put on ``PYTHONPATH`` before Ray starts (a user's app is installed instead).
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any

from plain_flower.task import PlainSettings

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _environment() -> None:
    """Flower and Ray offline, and ``plain_flower`` importable in Ray's worker processes."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", str(Path.cwd() / ".flwr-home"))
    here = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])


def round_seconds(stamps: list[float]) -> list[float]:
    """Per-round wall seconds from the round-end stamps (``stamps[0]``: the start of round 1)."""
    return [b - a for a, b in itertools.pairwise(stamps)]


def run_plain_flower(s: PlainSettings, num_cpus: int = 2) -> dict[str, Any]:
    """Run the plain app once; return its timings and final accuracy.

    Returns
    -------
    dict
        ``wall_s`` (the whole ``run_simulation`` call, Ray start-up included), ``round_s`` (each
        round's wall seconds), ``steady_round_s`` (median over rounds after the first; the first
        round when there is one), ``accuracy`` (final test accuracy).
    """
    _environment()
    from flwr.simulation import run_simulation

    from plain_flower.client_app import app as client_app
    from plain_flower.server_app import make_server_app

    out: dict[str, Any] = {}
    backend: Any = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "address": "local",
            "num_cpus": num_cpus,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
    }
    t0 = time.perf_counter()
    run_simulation(make_server_app(s, out), client_app, num_supernodes=s.clients, backend_config=backend)
    wall = time.perf_counter() - t0
    if "accuracy" not in out:
        raise RuntimeError("the plain Flower run ended without a result (see the Flower log above)")
    rounds = round_seconds(out["round_end_s"])
    steady = rounds[1:] or rounds
    return {
        "wall_s": wall,
        "round_s": rounds,
        "steady_round_s": statistics.median(steady),
        "accuracy": out["accuracy"],
    }
