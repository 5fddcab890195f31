"""The files a simulation writes: the server's run record (``results.json``, ``results.csv``; see
:mod:`stamen.server.records`) plus ``plot.png`` — accuracy per evaluated round and cumulative bytes
per round, titled with the scenario name. Every file is written atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stamen.server.history import RoundRecord
from stamen.server.records import (
    RESERVED_KEYS,
    ROUND_KEYS,
    _normalized,
    atomic_write,
    load_results,
    summarize,
    write_record,
)

__all__ = ["RESERVED_KEYS", "ROUND_KEYS", "load_results", "summarize", "write_results"]


def write_results(
    out_dir: Path, scenario: Mapping[str, Any], rounds: Sequence[RoundRecord], **kw: Any
) -> dict[str, Path]:
    """:func:`stamen.server.records.write_record` (``extra=`` more JSON keys) plus ``plot.png``;
    returns ``{"json": ..., "csv": ..., "plot": ...}``."""
    paths = write_record(out_dir, scenario, rounds, **kw)
    paths["plot"] = Path(out_dir) / "plot.png"
    atomic_write(paths["plot"], _plot_png(str(scenario.get("name", "")), _normalized(rounds)))
    return paths


def _plot_png(title: str, rounds: Sequence[RoundRecord]) -> bytes:
    """Accuracy (evaluated rounds only) and cumulative bytes vs round; Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    x = np.array([r.round for r in rounds], dtype=np.int64)
    acc = np.array([r.accuracy for r in rounds], dtype=np.float64)
    total = np.cumsum([r.bytes_up + r.bytes_down for r in rounds], dtype=np.float64)
    seen = np.isfinite(acc)
    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_bytes = fig.subplots(2, 1, sharex=True)
    ax_acc.plot(x[seen], acc[seen], marker="o", markersize=3)
    ax_acc.set_ylabel("test accuracy")
    ax_acc.grid(alpha=0.3)
    ax_bytes.plot(x, total / 1e6, color="tab:orange")
    ax_bytes.set_ylabel("cumulative MB (up + down)")
    ax_bytes.set_xlabel("round")
    ax_bytes.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_bytes.grid(alpha=0.3)
    fig.suptitle(title or "stamen run")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
