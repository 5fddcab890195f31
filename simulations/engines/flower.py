"""``flower`` engine: the real ServerApp logic and the real ClientApp through Flower's simulation
engine (``flwr.simulation.run_simulation``, Ray backend), one virtual SuperNode per client.

The ServerApp is built here around the same :func:`~stamen.server.federation.run_federation` that
``stamen.server.app:app`` runs, with the config passed by closure (``run_simulation`` gives an empty
run config); the ClientApp is ``stamen.client.app:app`` itself.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from stamen.server.config import ServerConfig
from stamen.server.federation import FederationResult
from stamen.server.history import ProgressFn

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


def flower_environment(home: str | None = None) -> None:
    """Keep Flower and Ray off the network and confine their state to a project-local FLWR_HOME."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", home or os.path.join(os.getcwd(), ".flwr-home"))


def run_flower(cfg: ServerConfig, progress: ProgressFn | None = None, num_cpus: int = 2) -> FederationResult:
    """Run the federation through ``run_simulation`` and return the server's records."""
    flower_environment()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from stamen.client.app import app as client_app
    from stamen.server.federation import run_federation
    from stamen.simulations.adversary import attack_factory

    out: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        out["result"] = run_federation(grid, cfg, progress=progress, attack_factory=attack_factory(cfg))

    backend: Any = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": num_cpus,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "include_dashboard": False,
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _quiet_flower()
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.num_clients,
            backend_config=backend,
        )
    if "result" not in out:
        raise RuntimeError("the Flower simulation ended without a result (see the Flower log above)")
    result: FederationResult = out["result"]
    return result


def _quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from stamen._quiet import quiet_flower_simulation  # drops only run_simulation's deprecation notice

    quiet_flower_simulation()
