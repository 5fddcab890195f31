"""``stamen check-app``: check a ``flwr run`` configuration before the run starts.

``flwr run`` submits the run and streams its log; in Flower 1.41 its own exit status does not tell
whether the ServerApp then succeeded (a ServerApp that raises is logged with "Exit Code: 201" while
``flwr run --stream`` still exits 0; issue #14). So a configuration is checked here first, the way
the ServerApp reads it: the app's ``[tool.flwr.app.config]`` defaults from its ``pyproject.toml``,
fused with the ``-c/--run-config`` overrides exactly as ``flwr run`` fuses them (Flower's own
``parse_config_args`` and ``get_fused_config_from_dir``), then
:meth:`stamen.server.config.ServerConfig.from_run_config`: the scenario, every override and every
combination the server would refuse before round 1 (e.g. Krum's ``2f + 2 < n`` on the cohort).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fused_run_config(app_dir: str | Path, run_config: Sequence[str] = ()) -> dict[str, Any]:
    """The run config the ServerApp would get from ``flwr run APP_DIR -c ...`` (flattened keys).

    Raises ``FileNotFoundError`` without ``APP_DIR/pyproject.toml`` and ``ValueError`` for an
    override Flower cannot parse.
    """
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    app = Path(app_dir)
    if not (app / "pyproject.toml").is_file():
        raise FileNotFoundError(f"no pyproject.toml in {str(app)!r}: not a Flower app directory")
    try:
        overrides = parse_config_args(list(run_config) or None)
    except Exception as exc:  # Flower raises bare errors (tomli, ValueError) for malformed pairs
        raise ValueError(f"run config {' '.join(run_config)!r} does not parse: {exc}") from exc
    return dict(get_fused_config_from_dir(app, overrides))


def check_app(app_dir: str | Path, run_config: Sequence[str] = ()) -> str:
    """Read the fused run config as the ServerApp will; a one-line summary, or ``ValueError``."""
    from stamen.server.config import ServerConfig

    fused = fused_run_config(app_dir, run_config)
    cfg = ServerConfig.from_run_config(fused)
    s = cfg.settings
    return (
        f"ok: scenario {fused.get('scenario', 'smoke')!r}, {s.rounds} rounds, "
        f"{cfg.per_round} of {cfg.num_clients} clients a round, rule {s.aggregation.rule!r}"
    )
