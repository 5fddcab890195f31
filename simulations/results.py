"""Per-round records of a simulation run and the files that report them.

``write_results`` produces, in one output directory:

``results.json``
    ``{"scenario": {...}, "rounds": [{round, accuracy, loss, bytes_up, bytes_down, epsilon,
    rejected, wall_s}, ...], "final": {...}, "engine": ...}`` plus any ``extra`` top-level keys.
    Strict JSON: missing values (NaN accuracy or loss of a round without evaluation, no epsilon)
    are ``null``.
``results.csv``
    One row per round, header = the round keys; missing values are empty cells.
``plot.png``
    Accuracy per evaluated round, cumulative bytes up and bytes down per round (two lines), and,
    when any round reports one, the cumulative privacy ε per round; when the rounds carry a
    simulated clock (``sim_time_s``: async runs, and sync runs of the in-process engine's timing
    model), accuracy against simulated seconds below them (with a staleness panel when any update
    was stale). Titled with the scenario name or the caller's ``title`` (the CLI adds the ``--set``
    overrides).

``check_out_dir`` finds, before a run starts, every reason ``write_results`` would fail to write
(an existing file in the way, a directory that cannot be written), so no run's results are lost.

Every file is written atomically (temporary file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stamen.server.history import RoundRecord
from stamen.server.records import (
    RESERVED_KEYS,
    ROUND_KEYS,
    _normalized,
    atomic_write,
    check_out_dir,
    load_results,
    summarize,
    write_record,
)

__all__ = [
    "RESERVED_KEYS",
    "ROUND_KEYS",
    "check_out_dir",
    "load_results",
    "plot_figure",
    "summarize",
    "write_results",
]

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_results(
    out_dir: Path,
    scenario: Mapping[str, Any],
    rounds: Sequence[RoundRecord],
    extra: Mapping[str, Any] | None = None,
    *,
    engine: str | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``plot.png`` into ``out_dir`` (created).

    Parameters
    ----------
    out_dir : Path
        Output directory; created with parents if missing. Existing files are replaced.
    scenario : Mapping
        The scenario tree (``Scenario.to_dict()``); its ``name`` titles the plot.
    rounds : Sequence of RoundRecord
        Records in round order.
    extra : Mapping, optional
        More top-level JSON keys; may not reuse ``RESERVED_KEYS``.
    engine : str, optional
        What ran the rounds, recorded as ``"engine"``: ``"inprocess"``, ``"flower"`` (``stamen
        simulate --engine flower``), or what the ServerApp knows of itself (a ``flwr run``
        simulation vs a deployment). Given both here and in ``extra`` is an error.
    title : str, optional
        Plot title; default the scenario's ``name``.

    Returns
    -------
    dict of str to Path
        ``{"json": ..., "csv": ..., "plot": ...}``.

    Raises
    ------
    ValueError
        If ``extra`` reuses a reserved key, or names the engine as well as ``engine``.
    """
    extra = dict(extra or {})
    if engine is not None:
        if "engine" in extra:
            raise ValueError("the engine is given twice (engine= and extra['engine'])")
        extra = {"engine": engine, **extra}
    paths = write_record(out_dir, scenario, rounds, extra)
    rounds = _normalized(rounds)
    out_dir = Path(out_dir)
    paths["plot"] = out_dir / "plot.png"
    plot_title = title if title is not None else str(scenario.get("name", ""))
    atomic_write(paths["plot"], _png(plot_figure(plot_title, rounds)))
    return paths


def plot_figure(title: str, rounds: Sequence[RoundRecord]) -> Figure:
    """The run's figure (Agg canvas, no pyplot): test accuracy of the evaluated rounds; cumulative
    MB up and down as two lines (log scale when they differ by more than 100x); and the cumulative
    ε when any round reports one. Panels share the round axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    x = np.array([r.round for r in rounds], dtype=np.int64)
    private = any(r.epsilon is not None for r in rounds)
    timed = _has_clock(rounds)
    n_round = 3 if private else 2
    n_panels = n_round + (1 if timed else 0)
    fig = Figure(figsize=(6.4, 2.4 + 2.0 * n_panels), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, squeeze=False)[:, 0]
    by_round = axes[:n_round]
    for ax in by_round[1:]:
        ax.sharex(by_round[0])
    _accuracy_panel(by_round[0], x, rounds)
    _bytes_panel(by_round[1], x, rounds)
    if private:
        _epsilon_panel(by_round[2], x, rounds)
    by_round[-1].set_xlabel("round")
    by_round[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if timed:
        _sim_time_panel(axes[-1], rounds)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(textwrap.fill(title or "stamen run", width=70), fontsize="medium")
    return fig


def _accuracy_panel(ax: Any, x: np.ndarray, rounds: Sequence[RoundRecord]) -> None:
    acc = np.array([r.accuracy for r in rounds], dtype=np.float64)
    seen = np.isfinite(acc)
    ax.plot(x[seen], acc[seen], marker="o", markersize=3)
    ax.set_ylabel("test accuracy")


def _has_clock(rounds: Sequence[RoundRecord]) -> bool:
    """Whether the rounds carry a simulated clock (a finite ``sim_time_s`` on an evaluated round)."""
    return any(np.isfinite(r.sim_time_s) and np.isfinite(r.accuracy) for r in rounds)


def _sim_time_panel(ax: Any, rounds: Sequence[RoundRecord]) -> None:
    """Test accuracy against simulated seconds; the staleness of the used updates (max per round,
    right axis) when any was stale."""
    t = np.array([r.sim_time_s for r in rounds], dtype=np.float64)
    acc = np.array([r.accuracy for r in rounds], dtype=np.float64)
    seen = np.isfinite(acc) & np.isfinite(t)
    ax.plot(t[seen], acc[seen], marker="o", markersize=3, color="tab:purple")
    ax.set_ylabel("test accuracy")
    ax.set_xlabel("simulated time (s)")
    stale = np.array([r.staleness_max for r in rounds], dtype=np.float64)
    if stale.max(initial=0) > 0:
        twin = ax.twinx()
        finite = np.isfinite(t)
        twin.step(t[finite], stale[finite], where="post", color="tab:gray", alpha=0.6, linewidth=1)
        twin.set_ylabel("max staleness τ", color="tab:gray")


def _bytes_panel(ax: Any, x: np.ndarray, rounds: Sequence[RoundRecord]) -> None:
    up = np.cumsum([r.bytes_up for r in rounds], dtype=np.float64) / 1e6
    down = np.cumsum([r.bytes_down for r in rounds], dtype=np.float64) / 1e6
    ax.plot(x, up, color="tab:orange", label="up (clients → server)")
    ax.plot(x, down, color="tab:blue", linestyle="--", label="down (server → clients)")
    ends = [v[-1] for v in (up, down) if v.size and v[-1] > 0]
    if len(ends) == 2 and max(ends) > 100 * min(ends):
        ax.set_yscale("log")
    ax.set_ylabel("cumulative MB")
    ax.legend(loc="upper left", fontsize="small")


def _epsilon_panel(ax: Any, x: np.ndarray, rounds: Sequence[RoundRecord]) -> None:
    eps = np.array([np.nan if r.epsilon is None else r.epsilon for r in rounds], dtype=np.float64)
    seen = np.isfinite(eps)
    ax.plot(x[seen], eps[seen], color="tab:green", marker="o", markersize=3)
    ax.set_ylabel("privacy ε (cumulative)")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
