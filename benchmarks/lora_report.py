"""Table and learning-rate selection of ``bench_lora.py``: pure functions of finished runs.

Runs are keyed per seed by their label ``name@lr``. For each trainer the *selected* rate is the one
with the best median final **validation** accuracy over the seeds it ran on (ties: the smaller
rate); the test accuracy of that row is the reported figure, and Δ is paired per seed against
``full`` at its own selected rate. A selected rate at the smallest or largest rate of the trainer's
grid is flagged: the grid then does not bracket the optimum.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

BySeed = dict[int, dict[str, dict[str, Any]]]


def spread(values: list[float], fmt: str = ".3f") -> str:
    """``median [min–max]`` (just the value for one seed); '' for no values."""
    if not values:
        return ""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:{fmt}}"
    return f"{med:{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"


def lr_text(lr: float) -> str:
    """``3e-4`` style (``1e-2``, ``3e-3``)."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _label(run: dict[str, Any]) -> str:
    return str(run.get("label") or f"{run['name']}@{run['lr']:g}")


def _val(run: dict[str, Any]) -> float:
    value = run.get("final_val_accuracy")
    return math.nan if value is None else float(value)


def select(by_seed: BySeed) -> dict[str, str]:
    """Selected label per run name: best median validation accuracy (ties: smaller lr)."""
    scores: dict[str, list[tuple[float, float, str]]] = {}
    labels = {label: run for runs in by_seed.values() for label, run in runs.items()}
    for label, run in labels.items():
        vals = [_val(runs[label]) for runs in by_seed.values() if label in runs]
        vals = [v for v in vals if not math.isnan(v)]
        score = statistics.median(vals) if vals else -math.inf
        scores.setdefault(run["name"], []).append((-score, float(run["lr"]), label))
    return {name: min(options)[2] for name, options in scores.items()}


def at_edge(name: str, lr: float, grid: dict[str, tuple[float, ...]], tried: set[float]) -> bool:
    """Whether ``lr`` is the smallest or largest rate tried for ``name`` (only when > 1 was tried)."""
    del grid  # the rates actually run decide; GRID names what --grid would run
    rates = sorted(tried)
    return len(rates) > 1 and lr in (rates[0], rates[-1])


def _cells(by_seed: BySeed, label: str, full: str | None) -> dict[str, list[float]]:
    rows = {s: runs[label] for s, runs in by_seed.items() if label in runs}
    refs = {s: by_seed[s][full] for s in rows if full is not None and full in by_seed[s]}
    last_gaps = [r["rounds"][-1].get("gap") for r in rows.values()]
    return {
        "val": [v for v in (_val(r) for r in rows.values()) if not math.isnan(v)],
        "test": [r["final_accuracy"] for r in rows.values()],
        "diff": [100 * (rows[s]["final_accuracy"] - refs[s]["final_accuracy"]) for s in refs],
        "ratio": [refs[s]["bytes_up_per_client"] / rows[s]["bytes_up_per_client"] for s in refs],
        "gap": [g for g in last_gaps if g is not None and not math.isnan(g)],
        "bytes": [r["bytes_up_per_client"] for r in rows.values()],
        "seeds": [float(s) for s in rows],
    }


def table(by_seed: BySeed, central: dict[int, dict[str, Any]], grid: dict[str, tuple[float, ...]]) -> str:
    """Markdown table over seeds, one row per (run, lr); the selected rate of each run in bold."""
    chosen = select(by_seed)
    labels = {label: run for runs in by_seed.values() for label, run in runs.items()}
    order = sorted(labels, key=lambda k: (list(grid).index(labels[k]["name"]), labels[k]["lr"]))
    lines = [
        "| trainer / aggregation | lr | seeds | val acc (selects) | test acc, median [min–max] "
        "| Δ test vs full (pts, paired) | bytes up / client / round | × fewer than full "
        "| naive–exact gap, last round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for label in order:
        run = labels[label]
        tried = {float(labels[k]["lr"]) for k in labels if labels[k]["name"] == run["name"]}
        c = _cells(by_seed, label, chosen.get("full"))
        sel = chosen[run["name"]] == label
        lr = f"**{lr_text(run['lr'])}**" if sel else lr_text(run["lr"])
        ratio = f"{statistics.median(c['ratio']):.0f}" if c["ratio"] else ""
        if sel and at_edge(run["name"], float(run["lr"]), grid, tried):
            notes.append(f"- {run['name']}: selected lr {lr_text(run['lr'])} is at the edge of its rates")
        lines.append(
            f"| {run['name']} ({run['rule']}, codec {run['codec']}) | {lr} "
            f"| {','.join(str(int(s)) for s in c['seeds'])} | {spread(c['val'], '.4f')} "
            f"| {spread(c['test'], '.4f')} | {spread(c['diff'], '+.1f')} "
            f"| {statistics.median(c['bytes']):,.0f} "
            f"| {ratio} | {spread(c['gap'])} |"
        )
    if central:
        vals = [v["final_accuracy"] for v in central.values()]
        epochs = next(iter(central.values()))["epochs"]
        lines.append(
            f"| centralized full fine-tuning ({epochs} epochs, ceiling) | 1e-4 "
            f"| {','.join(map(str, central))} | | {spread(vals, '.4f')} | | | | |"
        )
    return "\n".join(lines + (["", *notes] if notes else ["", "- every selected lr is interior to its grid"]))


def combine_files(
    files: list[str], grid: dict[str, tuple[float, ...]]
) -> tuple[BySeed, dict[int, dict[str, Any]], str]:
    """Merge result files (any subset of seeds, runs and rates) into one table."""
    by_seed: BySeed = {}
    central: dict[int, dict[str, Any]] = {}
    for name in files:
        data = json.loads(Path(name).read_text())
        for seed, part in data["seeds"].items() if "seeds" in data else [(data["config"]["seed"], data)]:
            seed = int(seed)
            by_seed.setdefault(seed, {}).update({_label(r): r for r in part["runs"]})
            if part.get("centralized") and part["centralized"].get("epochs"):
                central[seed] = part["centralized"]
    by_seed, central = dict(sorted(by_seed.items())), dict(sorted(central.items()))
    return by_seed, central, table(by_seed, central, grid)
