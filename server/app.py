"""``stamen.server.app:app`` — the ServerApp a real federation runs (``flwr run .`` starts it).

Reads ``context.run_config`` once into a :class:`~stamen.server.config.ServerConfig` (the key
``scenario`` plus any ``section.key`` overrides; an empty run config runs ``smoke``), drives the
rounds over the run's ``Grid`` with the one round driver, and, if ``out-dir`` is set, writes
results.json / results.csv there. It builds no adversary and loads no data except an optional
held-out set for centralized evaluation (``eval-data``: an ``.npz`` with ``x`` and ``y``, or
``"package.module:function"``). Simulation-only settings (``[attack]``) are refused.

With ``state-dir`` set (default: unset, no checkpoint) the server checkpoints every completed round
(or asynchronous model version) there and a new ``flwr run`` with the same configuration resumes
from it (:mod:`stamen.server.checkpoint_run`; docs/deployment.md, "Restarts").
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.logs import configure_logging
from stamen.server.checkpoint import CheckpointError
from stamen.server.config import ServerConfig
from stamen.server.deployed import deployment_extras
from stamen.server.driver.driver import EvalFn, RoundDriver
from stamen.server.driver.flower_async import GridAsyncTransport
from stamen.server.driver.flower_transport import GridTransport
from stamen.server.federation import assemble, assemble_async, central_evaluator
from stamen.server.history import RoundRecord
from stamen.server.metrics import REJECTION_REASONS, ServerMetrics, start_metrics_server
from stamen.server.privacy.statement import privacy_statement
from stamen.server.records import check_out_dir, write_record
from stamen.task.datasource import load_data_source
from stamen.task.models import build_model
from stamen.task.weights import get_weights

log = logging.getLogger("stamen.server")

app = ServerApp()


def evaluator(cfg: ServerConfig, run_config: dict[str, Any]) -> EvalFn | None:
    """Centralized evaluation on the configured ``eval-data``, or None."""
    spec = run_config.get("eval-data")
    if not spec:
        return None
    source = load_data_source(str(spec), {}, run_config)
    test = source.test() or source.train()
    return central_evaluator(cfg, test)


INMEMORY_GRID_MODULE = "flwr.superlink.grid.inmemory_grid"


def simulated_grid(grid: Grid) -> bool:
    """Whether ``grid`` is Flower's simulation runtime, an ``InMemoryGrid``.

    Flower builds one in ``run_simulation`` and in ``flwr-simulation``, the process a simulation
    SuperLink starts for ``flwr run . local`` (``flwr/simulation/run_simulation.py``); a deployed
    SuperLink hands the ServerApp a grid over its Runtime API. Checked by class, not by name, and
    fail-safe: anything else is a deployment, where ``require-signed`` stays on. The module is not
    imported here (2.5 s): when the grid is an ``InMemoryGrid`` it is already loaded.
    """
    module = sys.modules.get(INMEMORY_GRID_MODULE)
    return module is not None and isinstance(grid, module.InMemoryGrid)


def engine_name(grid: Grid) -> str:
    """``"flower-simulation"`` or ``"flower-deployment"``: results.json's ``engine``."""
    return "flower-simulation" if simulated_grid(grid) else "flower-deployment"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point called by Flower with the run's grid and context."""
    configure_logging("server")
    run_config = dict(context.run_config)
    cfg = ServerConfig.from_run_config(run_config)
    if run_config.get("out-dir"):  # written after the last round: found unusable now, not then
        check_out_dir(Path(str(run_config["out-dir"])))
    simulated = simulated_grid(grid)
    initial = get_weights(build_model(cfg.task))
    extras = deployment_extras(cfg, run_config, initial, deployed=not simulated)
    extras.state_dir = Path(str(run_config["state-dir"])) if run_config.get("state-dir") else None
    transport = GridTransport(
        grid, cfg.num_clients, cfg.per_round, cfg.timeout_s, bind_identity=extras.require_signed
    )
    evaluate = evaluator(cfg, run_config)
    reporter = RoundReporter(operator_metrics(run_config))
    try:
        if cfg.settings.server.mode == "sync":
            driver = assemble(cfg, transport, initial, evaluate, extras)
            reporter.driver = driver
            result = driver.run(initial, progress=reporter)
        else:  # FedAsync / FedBuff: push/pull, no round barrier
            pushpull = GridAsyncTransport(transport, ttl_s=cfg.timeout_s)
            driver_a = assemble_async(cfg, pushpull, initial, evaluate, extras)
            result = driver_a.run(initial, progress=reporter)
    except CheckpointError as exc:  # a damaged state-dir, or another run's: one line, no traceback
        log.error("stamen: error: %s", exc)
        raise SystemExit(2) from None
    out = str(run_config.get("out-dir", ""))
    if out:
        extra: dict[str, Any] = {"engine": engine_name(grid)}
        if (statement := privacy_statement(cfg)) is not None:
            extra["privacy"] = statement
        if result.stopped:
            extra["stopped"] = result.stopped
        write_record(Path(out), cfg.settings.to_dict(), result.rounds, extra=extra)
        log.info("results written to %s", out)


def operator_metrics(run_config: dict[str, Any]) -> ServerMetrics | None:
    """Serve Prometheus metrics when ``metrics-port`` is set (on ``metrics-addr``, loopback by default)."""
    port = int(run_config.get("metrics-port", 0))
    if not port:
        return None
    server, metrics = start_metrics_server(port, str(run_config.get("metrics-addr", "127.0.0.1")))
    log.info("operator metrics on http://%s:%d/metrics", *server.server_address[:2])
    return metrics


class RoundReporter:
    """Logs every round (one line) and feeds the operator metrics."""

    def __init__(self, metrics: ServerMetrics | None) -> None:
        self.metrics = metrics
        self.driver: RoundDriver | None = None

    def __call__(self, rec: RoundRecord) -> None:
        stats = self.driver.last.stats if self.driver is not None and self.driver.last is not None else None
        accepted = stats.accepted if stats is not None else None
        kinds = list(stats.kinds) if stats is not None else []
        fields = {
            "accepted": accepted,
            "rejected": rec.rejected,
            "rejections": dict(sorted(Counter(kinds).items())),
            "accuracy": rec.accuracy,
            "epsilon": rec.epsilon,
        }
        log.info("stamen round %d: %s", rec.round, fields)
        if self.metrics is None:
            return
        staleness = [0.0] * (accepted or 0)
        self.metrics.record_round(rec.round, rec.bytes_up, rec.bytes_down, rec.epsilon, staleness)
        for kind in kinds:
            self.metrics.record_rejection(kind if kind in REJECTION_REASONS else "other")
