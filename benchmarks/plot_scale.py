"""Log-log plot of a run's cost against the number of clients (same per-round cohort).

Reads what `bench_scale_memory.py` wrote (nothing is re-measured): `scale_memory.json` (1k / 10k /
100k clients, medians of fresh processes) and, when present, `scale_memory_1m.json` (1M clients):

    .venv/bin/python benchmarks/plot_scale.py

Writes benchmarks/results/scale_cost.png: peak RSS (MiB) and wall seconds per round (after the run's
plan: data, partitions, model) against the
number of clients, both on log axes, with the "flat" line at the smallest size for reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("scale_memory_1m.json", "scale_memory.json")  # the main file wins a size both hold


def points(files: list[Path]) -> dict[int, dict[str, float]]:
    """``{clients: {"rss": MiB, "round_s": s}}`` from the result files (later files win a size).

    ``round_s`` is the run's wall time after its plan (data, partitions, model) per round.
    """
    out: dict[int, dict[str, float]] = {}
    for path in files:
        data: dict[str, Any] = json.loads(path.read_text())
        rounds = max(int(data["rounds"]), 1)
        for size, row in data["rows"].items():
            rounds_s = float(row["wall_s"]) - float(row["plan_s"])
            out[int(size)] = {"rss": float(row["peak_rss_mib"]), "round_s": rounds_s / rounds}
    return dict(sorted(out.items()))


def plot(pts: dict[int, dict[str, float]], out: Path) -> None:
    """Two log-log panels: peak RSS and wall seconds per round against clients."""
    sizes = list(pts)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in zip(
        axes, ("rss", "round_s"), ("peak RSS (MiB)", "wall s per round (after the plan)"), strict=True
    ):
        ys = [pts[n][key] for n in sizes]
        ax.loglog(sizes, ys, "o-", label="measured")
        ax.loglog(sizes, [ys[0]] * len(sizes), "--", color="grey", label="flat (cost of the smallest)")
        ax.set_xlabel("clients (same per-round cohort)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("stamen in-process engine: cost against the number of clients (bench_scale_memory.py)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    files = [RESULTS / name for name in SOURCES if (RESULTS / name).exists()]
    if not files:
        raise SystemExit("no scale_memory*.json under benchmarks/results: run bench_scale_memory.py first")
    pts = points(files)
    out = RESULTS / "scale_cost.png"
    plot(pts, out)
    for n, p in pts.items():
        print(f"{n:>9,} clients: peak RSS {p['rss']:7.1f} MiB, {p['round_s']:6.2f} s per round")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
