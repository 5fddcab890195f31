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

FRL and Bristle need their own model, trainer and codec (``Defense.overrides``, the settings of the
built-in ``frl`` / ``bristle`` scenarios on the same data, clients and rounds): FRL a supermask MLP
40-128-10 trained by rank learning (lr 0.4 x 0.999^round, batch 8, ``frl_rank`` codec); Bristle
(server mode) the frozen mnist1d-letters feature extractor with a trainable output layer (Adam lr
1e-3, L2 5e-3, batch 5, one epoch). Not every attack applies (:func:`applies`, cells "n/a"):
``rank_reversal`` forges rankings and only FRL votes on rankings; the float update attacks forge
non-permutation rows that FRL's vote drops (the ``frl_rank`` codec cannot even encode them), i.e.
the attackers would just abstain, so FRL faces ``rank_reversal`` and ``label_flip`` only.

Regenerate::

    .venv/bin/python benchmarks/bench_robustness.py            # full grid (634 runs), --jobs 2
    .venv/bin/python benchmarks/bench_robustness.py --quick    # 4 rules x 3 attacks at 20 %, 10 rounds
    # more seeds at 20 % for the main rules (the seed-spread table):
    .venv/bin/python benchmarks/bench_robustness.py --resume --fractions 0.2 --seeds 0,1,2 \
        --partitions dirichlet0.5 --rules fedavg,median,trimmed_mean,krum,frl,bristle

The tables and plots always cover the whole grid at seed 0 (plus every seed found at 20 %).

Writes ``benchmarks/results/robustness.json`` (every run, resumable with ``--resume``),
``robustness.md`` (tables) and ``robustness_heatmap.png`` / ``robustness_worst.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Provenance, out_path, parser
from robustness_report import heatmap, markdown, seed_table, spread, worst_plot

__all__ = ["heatmap", "markdown", "seed_table", "spread", "worst_plot"]  # re-exported for tests

CLIENTS = 20


@dataclass(frozen=True)
class Defense:
    """How a table row is configured: rule, pre-aggregators, aggregation params, extra overrides."""

    rule: str
    pre: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # e.g. a trainer/model a rule needs (FRL, Bristle)


FRL = (
    "model.name=supermask_mlp",
    "clients.trainer=frl",
    "codec.pipeline=frl_rank",
    "clients.lr=0.4",
    "clients.lr_decay=0.999",
    "clients.batch_size=8",
    "clients.weight_decay=0.0001",
)
BRISTLE = (
    "model.name=bristle_transfer",
    "clients.trainer=bristle",
    "clients.optimizer=adam",
    "clients.lr=0.001",
    "clients.weight_decay=0.005",
    "clients.batch_size=5",
    "clients.local_epochs=1",
)
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
    "frl": lambda f, n: Defense("frl", overrides=FRL),
    "bristle": lambda f, n: Defense("bristle", overrides=BRISTLE),
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
    "rank_reversal": ("rank_reversal", {}),
}
RANKING_RULES, RANKING_ATTACKS, DATA_ATTACKS = {"frl"}, {"rank_reversal"}, {"label_flip"}


def applies(rule: str, attack: str) -> bool:
    """Whether a cell is run: ranking attacks only against ranking rules, which in turn face only
    ranking and data attacks (see the module docstring); the clean run always."""
    if attack == "none" or attack in DATA_ATTACKS:
        return True
    return (rule in RANKING_RULES) == (attack in RANKING_ATTACKS)


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
    seeds: list[int]
    rounds: int

    clients: int = CLIENTS

    @staticmethod
    def applies(rule: str, attack: str) -> bool:
        """Whether ``attack`` is run against ``rule`` (see :func:`applies`)."""
        return applies(rule, attack)

    @property
    def seed(self) -> int:
        """The seed of the main tables and plots (the first one)."""
        return self.seeds[0]

    def cell(self, rule: str, attack: str, fraction: float, partition: str, seed: int | None = None) -> Cell:
        return Cell(rule, attack, fraction, partition, self.seed if seed is None else seed, self.rounds)

    def cells(self) -> list[Cell]:
        """Clean runs (fraction 0) plus every applicable attack at every fraction, for every seed."""
        out = []
        for seed, part, rule in itertools.product(self.seeds, self.partitions, self.rules):
            out.append(self.cell(rule, "none", 0.0, part, seed))
            out += [
                self.cell(rule, a, fr, part, seed)
                for fr in self.fractions
                for a in self.attacks
                if applies(rule, a)
            ]
        return out


Runs = dict[str, dict[str, Any]]


def run_all(cells: list[Cell], jobs: int, out: Path, done: Runs, prov: Provenance) -> dict[str, Any]:
    """Run the missing cells (in ``jobs`` processes), saving after each one; every new row records
    the commit it ran from (``--resume`` files mix invocations)."""
    todo = [c for c in cells if c.key not in done]
    print(f"{len(cells)} cells, {len(todo)} to run, {jobs} process(es)", flush=True)
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else None
    rows = pool.map(run_cell, todo) if pool else map(run_cell, todo)
    for i, row in enumerate(rows, 1):
        done[row["key"]] = {**row, "commit": prov.commit, "dirty": prov.dirty}
        acc = f"{row['accuracy']:.3f}" if "accuracy" in row else row["error"][:60]
        print(f"[{i}/{len(todo)}] {row['key']}: {acc} ({row['wall_s']:.1f} s)", flush=True)
        save(out, done, prov)
    if pool:
        pool.shutdown()
    return {"grid_wall_s": time.perf_counter() - t0}


def save(out: Path, done: Runs, prov: Provenance, meta: dict[str, Any] | None = None) -> None:
    """Write every run so far (atomic rename)."""
    setting = {"base_overrides": list(BASE), "clients": CLIENTS, "partitions": PARTITIONS, **(meta or {})}
    runs = sorted(done.values(), key=lambda r: r["key"])
    prov.write(out, {"setting": setting, "runs": runs}, quiet=True)


def parse() -> tuple[argparse.Namespace, Grid]:
    p = parser(__doc__, quick="4 rules x 3 attacks at 20 %%, 10 rounds", out="robustness.json")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--fractions", default="0.1,0.2,0.3")
    p.add_argument("--partitions", default=",".join(PARTITIONS))
    p.add_argument("--seeds", default="0", help="comma-separated; the tables' main seed is the first")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--resume", action="store_true", help="keep finished runs of the JSON file")
    a = p.parse_args()
    g = Grid(
        a.rules.split(","),
        a.attacks.split(","),
        [float(x) for x in a.fractions.split(",")],
        a.partitions.split(","),
        [int(x) for x in a.seeds.split(",")],
        a.rounds,
    )
    if a.quick:
        quick = (["fedavg", "median", "trimmed_mean", "krum"], ["sign_flip", "alie", "label_flip"], [0.2])
        g = Grid(*quick, g.partitions, g.seeds, 10)
    unknown = [x for x in g.rules if x not in RULES] + [x for x in g.attacks if x not in ATTACKS]
    unknown += [x for x in g.partitions if x not in PARTITIONS]
    if unknown:
        p.error(f"unknown rule/attack/partition label(s): {unknown}")
    return a, g


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    a, g = parse()
    prov = Provenance.capture()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the spawned workers
    out = out_path(a)
    done: Runs = {}
    if a.resume and out.exists():
        done = {r["key"]: r for r in json.loads(out.read_text())["runs"] if "accuracy" in r}
    meta = run_all(g.cells(), a.jobs, out, done, prov)
    save(out, done, prov, {**meta, **asdict(g), "jobs": a.jobs})
    full = Grid(list(RULES), list(ATTACKS), [0.1, 0.2, 0.3], list(PARTITIONS), [0], a.rounds)
    report = g if a.quick else full  # the whole table, whatever subset this invocation ran
    table = markdown(done, report) + seed_table(done, report, 0.2)
    out.with_suffix(".md").write_text(table)
    print(table)
    heatmap(done, report, out.with_name(f"{out.stem}_heatmap.png"))
    worst_plot(done, report, out.with_name(f"{out.stem}_worst.png"))
    print(f"wrote {out} (+ .md, _heatmap.png, _worst.png) in {meta['grid_wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
