"""Robustness table: final test accuracy of every rule under every attack, on mnist1d.

Grid: rules x attacks x attacker fractions {0.1, 0.2, 0.3} (plus one clean run per rule) x
partitions {Dirichlet alpha=0.5, iid}. Each cell is one run of ``stamen.simulations.scenario
.load_scenario("smoke", overrides) -> ServerConfig.from_scenario -> run_engine("inprocess", cfg)``.
FedAvg (no defense) is the floor, the clean run of each rule its ceiling.

Setting (CPU-feasible; every client participates every round, so a round has exactly
``floor(fraction * 20)`` attackers): mnist1d (5000 samples generated offline, 80 % train), 20 clients,
20 rounds, MLP 40-128-10, 2 local epochs of SGD (lr 0.1, momentum 0.9, batch 32), dense codec.
The defenses assume ``f = max(actual attackers, 10 % of the cohort)`` (so the clean column shows the
price of a nominal 10 % assumption), clamped to what the rule tolerates (Bulyan ``4f + 3 <= n``).

Regenerate::

    .venv/bin/python benchmarks/bench_robustness.py            # full grid (~560 runs), --jobs 2
    .venv/bin/python benchmarks/bench_robustness.py --quick    # 4 rules x 3 attacks at 20 %, 10 rounds

Writes ``benchmarks/results/robustness.json`` (every run, resumable with ``--resume``),
``robustness.md`` (tables) and ``robustness_heatmap.png`` / ``robustness_worst.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = 20


@dataclass(frozen=True)
class Defense:
    """How a table row is configured: rule, pre-aggregators, aggregation params, extra overrides."""

    rule: str
    pre: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # e.g. a trainer/model a rule needs (FRL, Bristle)


# label -> (assumed f, cohort size n) -> Defense.  Adding a rule is one line here.
RULES: dict[str, Callable[[int, int], Defense]] = {
    "fedavg": lambda f, n: Defense("fedavg"),
    "median": lambda f, n: Defense("median"),
    "trimmed_mean": lambda f, n: Defense("trimmed_mean", params={"beta": f / n}),
    "krum": lambda f, n: Defense("krum", params={"assumed_byzantine": min(f, (n - 3) // 2)}),
    "multikrum": lambda f, n: Defense("multikrum", params={"assumed_byzantine": min(f, (n - 3) // 2)}),
    "bulyan": lambda f, n: Defense("bulyan", params={"assumed_byzantine": min(f, (n - 3) // 4)}),
    "geomed": lambda f, n: Defense("geomed"),
    "centered_clipping": lambda f, n: Defense("centered_clipping", params={"tau": 3.0}),
    "nnm+trimmed_mean": lambda f, n: Defense(
        "trimmed_mean", ("nnm",), {"beta": f / n, "assumed_byzantine": f}
    ),
}
# label -> (attack kind, attack params).  Adding an attack is one line here.
ATTACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "sign_flip": ("sign_flip", {}),
    "scaling": ("scaling", {}),
    "gaussian": ("gaussian", {}),
    "alie": ("alie", {}),
    "ipm": ("ipm", {}),
    "min_max": ("min_max", {}),
    "min_sum": ("min_sum", {}),
    "fang_krum": ("fang_krum", {}),
    "fang_trmean": ("fang_trmean", {}),
    "label_flip": ("label_flip", {}),
}
PARTITIONS: dict[str, tuple[str, ...]] = {
    "dirichlet0.5": ("data.partition=dirichlet", "data.alpha=0.5"),
    "iid": ("data.partition=iid",),
}
BASE = (
    "data.dataset=mnist1d",
    "data.num_samples=5000",
    f"data.num_clients={CLIENTS}",
    f"clients.per_round={CLIENTS}",
    "clients.local_epochs=2",
    "clients.batch_size=32",
    "clients.lr=0.1",
    "clients.momentum=0.9",
    "model.hidden=128",
    "codec.pipeline=dense",
)


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    rule: str
    attack: str  # "none" for the clean run
    fraction: float
    partition: str
    seed: int
    rounds: int

    @property
    def key(self) -> str:
        return f"{self.partition}|{self.rule}|{self.attack}|{self.fraction:g}|{self.seed}|{self.rounds}"


def assumed_f(fraction: float) -> int:
    """Attackers a defense assumes: the actual count, at least 10 % of the cohort."""
    return max(math.floor(fraction * CLIENTS + 1e-9), math.floor(0.1 * CLIENTS + 1e-9))


def overrides(cell: Cell) -> list[str]:
    """The ``--set`` overrides of one cell."""
    d = RULES[cell.rule](assumed_f(cell.fraction), CLIENTS)
    out = [
        *BASE,
        *PARTITIONS[cell.partition],
        f"rounds={cell.rounds}",
        f"eval.every={cell.rounds}",
        f"seed={cell.seed}",
        f"aggregation.rule={d.rule}",
        *d.overrides,
    ]
    if d.pre:
        out.append(f"aggregation.pre={','.join(d.pre)}")
    out += [f"aggregation.{k}={v}" for k, v in d.params.items()]
    if cell.attack != "none":
        kind, params = ATTACKS[cell.attack]
        out += [f"attack.kind={kind}", f"attack.fraction={cell.fraction}"]
        out += [f"attack.{k}={v}" for k, v in params.items()]
    return out


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell in this process; never raises (errors are recorded)."""
    from stamen.server.config import ServerConfig
    from stamen.simulations.engines import run_engine
    from stamen.simulations.scenario import load_scenario

    t0 = time.perf_counter()
    row: dict[str, Any] = {**asdict(cell), "key": cell.key, "overrides": overrides(cell)}
    try:
        cfg = ServerConfig.from_scenario(load_scenario("smoke", row["overrides"]))
        result = run_engine("inprocess", cfg)
        row["accuracy"] = float(result.rounds[-1].accuracy)
        row["rejected"] = int(sum(r.rejected for r in result.rounds))
    except Exception as exc:  # a bad cell must not stop a 40-minute grid
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["wall_s"] = time.perf_counter() - t0
    return row


@dataclass(frozen=True)
class Grid:
    """What to run and tabulate."""

    rules: list[str]
    attacks: list[str]
    fractions: list[float]
    partitions: list[str]
    seed: int
    rounds: int

    def cell(self, rule: str, attack: str, fraction: float, partition: str) -> Cell:
        return Cell(rule, attack, fraction, partition, self.seed, self.rounds)

    def cells(self) -> list[Cell]:
        """Clean runs (fraction 0) plus every attack at every fraction."""
        out = []
        for part in self.partitions:
            for rule in self.rules:
                out.append(self.cell(rule, "none", 0.0, part))
                out += [self.cell(rule, a, fr, part) for fr in self.fractions for a in self.attacks]
        return out


Runs = dict[str, dict[str, Any]]


def run_all(cells: list[Cell], jobs: int, out: Path, done: Runs) -> dict[str, Any]:
    """Run the missing cells (in ``jobs`` processes), saving after each one."""
    todo = [c for c in cells if c.key not in done]
    print(f"{len(cells)} cells, {len(todo)} to run, {jobs} process(es)", flush=True)
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else None
    rows = pool.map(run_cell, todo) if pool else map(run_cell, todo)
    for i, row in enumerate(rows, 1):
        done[row["key"]] = row
        acc = f"{row['accuracy']:.3f}" if "accuracy" in row else row["error"][:60]
        print(f"[{i}/{len(todo)}] {row['key']}: {acc} ({row['wall_s']:.1f} s)", flush=True)
        save(out, done)
    if pool:
        pool.shutdown()
    return {"grid_wall_s": time.perf_counter() - t0}


def save(out: Path, done: Runs, meta: dict[str, Any] | None = None) -> None:
    """Write every run so far (atomic rename)."""
    setting = {"base_overrides": list(BASE), "clients": CLIENTS, "partitions": PARTITIONS}
    setting |= {"python": platform.python_version(), "cpus": os.cpu_count(), **(meta or {})}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"setting": setting, "runs": sorted(done.values(), key=lambda r: r["key"])}))
    tmp.replace(out)


def accuracy(done: Runs, cell: Cell) -> float:
    """Final accuracy of a finished cell, NaN if missing or failed."""
    return float(done.get(cell.key, {}).get("accuracy", math.nan))


def worst_case(done: Runs, g: Grid, rule: str, part: str, fr: float) -> float:
    """Lowest final accuracy over the attacks at one fraction (NaN if none finished)."""
    accs = [a for a in (accuracy(done, g.cell(rule, x, fr, part)) for x in g.attacks) if not math.isnan(a)]
    return min(accs) if accs else math.nan


def markdown(done: Runs, g: Grid) -> str:
    """One table per (partition, fraction): rows = rules, columns = clean + attacks + worst case."""

    def fmt(v: float) -> str:
        return "—" if math.isnan(v) else f"{v:.3f}"

    lines = []
    for part in g.partitions:
        for fr in g.fractions:
            lines += [
                f"\n**{part}, {fr:.0%} attackers** (final accuracy, seed {g.seed}, {g.rounds} rounds)\n",
                "| rule | clean | " + " | ".join(g.attacks) + " | worst |",
                "|---|" + "---:|" * (len(g.attacks) + 2),
            ]
            for rule in g.rules:
                vals = [fmt(accuracy(done, g.cell(rule, a, fr, part))) for a in g.attacks]
                clean = fmt(accuracy(done, g.cell(rule, "none", 0.0, part)))
                worst = fmt(worst_case(done, g, rule, part, fr))
                lines.append(f"| {rule} | {clean} | " + " | ".join(vals) + f" | **{worst}** |")
    return "\n".join(lines) + "\n"


def heatmap(done: Runs, g: Grid, path: Path) -> None:
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
            if not np.isnan(v):
                color = "white" if v < 0.5 else "black"
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=5.5, color=color)
    title = f"mnist1d final test accuracy ({CLIENTS} clients, {g.rounds} rounds, seed {g.seed})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def worst_plot(done: Runs, g: Grid, path: Path) -> None:
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


def parse() -> tuple[argparse.Namespace, Grid]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 rules x 3 attacks at 20 %%, 10 rounds")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--fractions", default="0.1,0.2,0.3")
    p.add_argument("--partitions", default=",".join(PARTITIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--resume", action="store_true", help="keep finished runs of the JSON file")
    p.add_argument("--out", default=None, help="JSON path (default results/robustness[_quick].json)")
    a = p.parse_args()
    g = Grid(
        a.rules.split(","),
        a.attacks.split(","),
        [float(x) for x in a.fractions.split(",")],
        a.partitions.split(","),
        a.seed,
        a.rounds,
    )
    if a.quick:
        g = Grid(
            ["fedavg", "median", "trimmed_mean", "krum"],
            ["sign_flip", "alie", "label_flip"],
            [0.2],
            g.partitions,
            a.seed,
            10,
        )
    unknown = [x for x in g.rules if x not in RULES] + [x for x in g.attacks if x not in ATTACKS]
    unknown += [x for x in g.partitions if x not in PARTITIONS]
    if unknown:
        p.error(f"unknown rule/attack/partition label(s): {unknown}")
    return a, g


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    a, g = parse()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the spawned workers
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(a.out) if a.out else RESULTS / ("robustness_quick.json" if a.quick else "robustness.json")
    done: Runs = {}
    if a.resume and out.exists():
        done = {r["key"]: r for r in json.loads(out.read_text())["runs"] if "accuracy" in r}
    meta = run_all(g.cells(), a.jobs, out, done)
    save(out, done, {**meta, **asdict(g), "jobs": a.jobs})
    table = markdown(done, g)
    out.with_suffix(".md").write_text(table)
    print(table)
    heatmap(done, g, out.with_name(f"{out.stem}_heatmap.png"))
    worst_plot(done, g, out.with_name(f"{out.stem}_worst.png"))
    print(f"wrote {out} (+ .md, _heatmap.png, _worst.png) in {meta['grid_wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
