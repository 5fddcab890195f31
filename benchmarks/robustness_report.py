"""Tables and plots of the robustness grid (``bench_robustness.py``): accuracy per cell, worst case
over the attacks, seed spread, heatmaps. Pure functions of the finished runs and a grid.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Protocol

Runs = dict[str, dict[str, Any]]


class _Cell(Protocol):
    @property
    def key(self) -> str: ...


class GridLike(Protocol):
    """What the report needs of ``bench_robustness.Grid``."""

    rules: list[str]
    attacks: list[str]
    fractions: list[float]
    partitions: list[str]
    rounds: int
    clients: int

    @property
    def seed(self) -> int: ...

    def applies(self, rule: str, attack: str) -> bool: ...

    def cell(
        self, rule: str, attack: str, fraction: float, partition: str, seed: int | None = None
    ) -> Any: ...


def accuracy(done: Runs, cell: _Cell) -> float:
    """Final accuracy of a finished cell, NaN if missing or failed."""
    return float(done.get(cell.key, {}).get("accuracy", math.nan))


def worst_case(done: Runs, g: GridLike, rule: str, part: str, fr: float, seed: int | None = None) -> float:
    """Lowest final accuracy over the applicable attacks at one fraction (NaN if none finished)."""
    cells = (g.cell(rule, x, fr, part, seed) for x in g.attacks if g.applies(rule, x))
    accs = [a for a in (accuracy(done, c) for c in cells) if not math.isnan(a)]
    return min(accs) if accs else math.nan


def fmt(v: float, applicable: bool = True) -> str:
    """A table cell: 3 decimals, "—" if not run (yet), "n/a" if the attack does not apply."""
    return "n/a" if not applicable else "—" if math.isnan(v) else f"{v:.3f}"


def markdown(done: Runs, g: GridLike) -> str:
    """One table per (partition, fraction): rows = rules, columns = clean + attacks + worst case."""

    lines = []
    for part in g.partitions:
        for fr in g.fractions:
            lines += [
                f"\n**{part}, {fr:.0%} attackers** (final accuracy, seed {g.seed}, {g.rounds} rounds)\n",
                "| rule | clean | " + " | ".join(g.attacks) + " | worst |",
                "|---|" + "---:|" * (len(g.attacks) + 2),
            ]
            for rule in g.rules:
                vals = [fmt(accuracy(done, g.cell(rule, a, fr, part)), g.applies(rule, a)) for a in g.attacks]
                clean = fmt(accuracy(done, g.cell(rule, "none", 0.0, part)))
                worst = fmt(worst_case(done, g, rule, part, fr))
                lines.append(f"| {rule} | {clean} | " + " | ".join(vals) + f" | **{worst}** |")
    return "\n".join(lines) + "\n"


def seeds_found(done: Runs, fr: float, rounds: int) -> list[int]:
    """Every seed with at least one finished run at attacker fraction ``fr``."""
    return sorted({int(r["seed"]) for r in done.values() if r["fraction"] == fr and r["rounds"] == rounds})


def spread(vals: list[float]) -> str:
    """``median (min–max)`` of the finite values, "—" if none."""
    v = sorted(x for x in vals if not math.isnan(x))
    return "—" if not v else f"{statistics.median(v):.3f} ({v[0]:.3f}–{v[-1]:.3f})"


def seed_table(done: Runs, g: GridLike, fr: float) -> str:
    """Median (min–max) over the seeds at fraction ``fr``; rows = rules run with >= 2 seeds there."""
    seeds = seeds_found(done, fr, g.rounds)
    lines = []
    for part in g.partitions:
        rows = []
        for rule in g.rules:
            have = [
                s
                for s in seeds
                if not math.isnan(accuracy(done, g.cell(rule, "none", 0.0, part, s)))
                and any(g.cell(rule, a, fr, part, s).key in done for a in g.attacks)
            ]
            if len(have) < 2:
                continue
            cols = [spread([accuracy(done, g.cell(rule, "none", 0.0, part, s)) for s in have])]
            cols += [
                spread([accuracy(done, g.cell(rule, a, fr, part, s)) for s in have])
                if g.applies(rule, a)
                else "n/a"
                for a in g.attacks
            ]
            worst = spread([worst_case(done, g, rule, part, fr, s) for s in have])
            rows.append(f"| {rule} | {len(have)} | " + " | ".join(cols) + f" | **{worst}** |")
        if rows:
            lines += [
                f"\n**{part}, {fr:.0%} attackers, median (min–max) over seeds {seeds}**\n",
                "| rule | seeds | clean | " + " | ".join(g.attacks) + " | worst |",
                "|---|---:|" + "---:|" * (len(g.attacks) + 2),
                *rows,
            ]
    return "\n".join(lines) + "\n"


def heatmap(done: Runs, g: GridLike, path: Path) -> None:
    """Rules x attacks accuracy heatmaps, one per (partition, fraction)."""
    import matplotlib.pyplot as plt
    import numpy as np

    shape = (len(g.partitions), len(g.fractions))
    size = (max(4.2 * shape[1], 6.0), (0.42 * len(g.rules) + 1.6) * shape[0])
    fig, axes = plt.subplots(*shape, squeeze=False, figsize=size)
    for (i, j), ax in np.ndenumerate(axes):
        part, fr = g.partitions[i], g.fractions[j]
        acc = np.array([[accuracy(done, g.cell(r, a, fr, part)) for a in g.attacks] for r in g.rules])
        ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(g.attacks)), g.attacks, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(g.rules)), g.rules if j == 0 else [], fontsize=7)
        ax.set_title(f"{part}, {fr:.0%} attackers", fontsize=9)
        for (y, x), v in np.ndenumerate(acc):
            label = "n/a" if not g.applies(g.rules[y], g.attacks[x]) else "" if np.isnan(v) else f"{v:.2f}"
            color = "white" if not np.isnan(v) and v < 0.5 else "black"
            ax.text(x, y, label, ha="center", va="center", fontsize=5.5, color=color)
    title = f"mnist1d final test accuracy ({g.clients} clients, {g.rounds} rounds, seed {g.seed})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def worst_plot(done: Runs, g: GridLike, path: Path) -> None:
    """Worst-case accuracy over the attacks against the attacker fraction, one line per rule."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(g.partitions), squeeze=False, figsize=(5.5 * len(g.partitions), 4))
    for ax, part in zip(axes[0], g.partitions, strict=True):
        for rule in g.rules:
            ys = [accuracy(done, g.cell(rule, "none", 0.0, part))]
            ys += [worst_case(done, g, rule, part, fr) for fr in g.fractions]
            ax.plot([0.0, *g.fractions], ys, marker="o", label=rule)
        ax.set(title=f"{part}: worst case over attacks", xlabel="attacker fraction", ylabel="accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
