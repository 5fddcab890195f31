"""``stamen.server.app:app`` — the ServerApp a real federation runs (``flwr run .`` starts it).

Reads ``context.run_config`` once into a :class:`~stamen.server.config.ServerConfig` (the key
``scenario`` plus any ``section.key`` overrides; an empty run config runs ``smoke``), drives the
rounds over the run's ``Grid`` with the one round driver, and, if ``out-dir`` is set, writes
results.json / results.csv there. It builds no adversary and loads no data except an optional
held-out set for centralized evaluation (``eval-data``: an ``.npz`` with ``x`` and ``y``, or
``"package.module:function"``). Simulation-only settings (``[attack]``) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.server.config import ServerConfig
from stamen.server.driver.driver import EvalFn
from stamen.server.driver.flower_async import GridAsyncTransport
from stamen.server.driver.flower_transport import GridTransport
from stamen.server.federation import assemble, assemble_async, central_evaluator
from stamen.server.history import RoundRecord
from stamen.server.records import write_record
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


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point called by Flower with the run's grid and context."""
    run_config = dict(context.run_config)
    cfg = ServerConfig.from_run_config(run_config)
    transport = GridTransport(grid, cfg.num_clients, cfg.per_round, cfg.timeout_s)
    initial = get_weights(build_model(cfg.task))
    evaluate = evaluator(cfg, run_config)
    if cfg.settings.server.mode == "sync":
        result = assemble(cfg, transport, initial, evaluate).run(initial, progress=_log_round)
    else:  # FedAsync / FedBuff: push/pull, no round barrier
        pushpull = GridAsyncTransport(transport, ttl_s=cfg.timeout_s)
        result = assemble_async(cfg, pushpull, initial, evaluate).run(initial, progress=_log_round)
    out = str(run_config.get("out-dir", ""))
    if out:
        simulated = "InMemory" in type(grid).__name__  # Flower's simulation runtime, else a SuperLink
        extra = {"engine": "flower-simulation" if simulated else "flower-deployment"}
        if result.stopped:
            extra["stopped"] = result.stopped
        write_record(Path(out), cfg.settings.to_dict(), result.rounds, extra=extra)
        log.info("results written to %s", out)


def _log_round(rec: RoundRecord) -> None:
    log.info("stamen round: %s", rec)
