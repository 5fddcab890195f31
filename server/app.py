"""``stamen.server.app:app`` — the ServerApp that ``flwr run .`` starts (see pyproject.toml).

Reads ``context.run_config`` once into a :class:`~stamen.server.config.ServerConfig` (the key
``scenario`` plus any ``section.key`` overrides; an empty run config runs ``smoke``), runs the
federation and, if ``out-dir`` is set, writes results.json / results.csv / plot.png there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.server.config import ServerConfig
from stamen.server.federation import run_federation

log = logging.getLogger("stamen.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point called by Flower with the run's grid and context."""
    cfg = ServerConfig.from_run_config(context.run_config)
    from stamen.simulations.adversary import attack_factory

    result = run_federation(grid, cfg, progress=_log_round, attack_factory=attack_factory(cfg))
    out = str(context.run_config.get("out-dir", ""))
    if out:
        from stamen.simulations.results import write_results

        extra = {"engine": "flower-deployment", **result.extra}
        write_results(Path(out), cfg.scenario, result.rounds, extra=extra)
        log.info("results written to %s", out)


def _log_round(rec: object) -> None:
    log.info("stamen round: %s", rec)
