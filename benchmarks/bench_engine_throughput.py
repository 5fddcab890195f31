"""Engine throughput: client updates per second of every engine path, side by side, in one run.

Scenario (``bench_engine_paths.plan``): mnist1d, 1000 clients with Dirichlet(0.5) label skew, 100
per round, MLP 40-64-10, 2 local epochs of batch 16, SGD lr 0.2, dense codec, FedAvg, centralized
evaluation after the last round. Measured in one process, one after the other:

- stamen in-process: the per-client loop (``engine.batching=off``), cohort-batched
  (``engine.batching=on``), and cohort-batched in 2 worker processes (``engine.workers=2``) —
  envelopes released, verified, decoded, validated and aggregated as in a deployment;
- stamen's Flower engine (``--engine flower``: the real ClientApp in Ray actors, 2 CPUs);
- **the anchor**: a plain Flower 1.41 app of the same model on the same partitions
  (``benchmarks/plain_flower``: ``FedAvg`` of the Message API, torch SGD, ``run_simulation``, 2 CPUs).

Reported per path and number of rounds: whole-run wall and updates/s (Ray start-up included),
steady-state per-round updates/s (median round after the first: no start-up, no first round), both
as ratios to plain Flower; the in-process overhead (wall / pure local-training compute of the same
clients, timed alone); and the Flower engine's first round with the former per-node partition query
(``--query-check``), the cost the recorded mapping removed. Medians of ``--repeats``.

    .venv/bin/python benchmarks/bench_engine_throughput.py               # the full table (~15 min)
    .venv/bin/python benchmarks/bench_engine_throughput.py --quick       # 100 clients, 20/round

Writes benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser
from bench_engine_paths import plan
from plain_flower.run import run_plain_flower
from plain_flower.task import PlainSettings

import stamen.simulations.engines.flower as flower_engine
from stamen.client.core import local_update
from stamen.server.driver.flower_transport import GridTransport
from stamen.server.sampling import sample_clients
from stamen.simulations.cohort import CohortData, client_seeds, train_cohort
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import client_data, dataset, partitions
from stamen.task.models import build_model
from stamen.task.weights import get_weights

INPROCESS: dict[str, tuple[str, ...]] = {
    "in-process, per-client": ("engine.batching=off", "engine.workers=1"),
    "in-process, cohort-batched": ("engine.batching=on", "engine.workers=1"),
    "in-process, cohort-batched, 2 workers": ("engine.batching=on", "engine.workers=2"),
}
FLOWER, PLAIN = "stamen --engine flower", "plain Flower 1.41 (anchor)"


def summary(wall: float, rounds: list[float], per_round: int) -> dict[str, float]:
    """Whole-run and steady-state (median round after the first) figures of one run."""
    steady = statistics.median(rounds[1:] or rounds)
    return {
        "wall_s": wall,
        "updates_per_s": per_round * len(rounds) / wall,
        "steady_round_s": steady,
        "steady_updates_per_s": per_round / steady,
        "first_round_s": rounds[0],
    }


def run_stamen(engine: str, p: SimulationPlan) -> dict[str, float]:
    """One stamen run: wall seconds and the driver's per-round wall seconds."""
    t0 = time.perf_counter()
    res = run_engine(engine, p)
    wall = time.perf_counter() - t0
    out = summary(wall, [r.wall_s for r in res.rounds], p.cfg.per_round)
    return {**out, "accuracy": float(res.rounds[-1].accuracy)}


def run_plain(clients: int, per_round: int, rounds: int) -> dict[str, float]:
    """One plain-Flower run on the same scenario."""
    s = PlainSettings(clients=clients, per_round=per_round, rounds=rounds)
    res = run_plain_flower(s, num_cpus=2)
    return {**summary(res["wall_s"], res["round_s"], per_round), "accuracy": res["accuracy"]}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-key medians over repeated runs (``repeats`` records how many)."""
    return {**{k: statistics.median(r[k] for r in runs) for k in runs[0]}, "repeats": len(runs)}


def pure_serial_s(p: SimulationPlan) -> float:
    """The per-client ``local_update`` calls alone (same clients and seeds, the initial weights)."""
    cfg = p.cfg
    model = build_model(cfg.task)
    weights, total = get_weights(model), 0.0
    for rnd in range(1, cfg.rounds + 1):
        pids = sample_clients(cfg.seed, rnd, cfg.num_clients, cfg.per_round)
        for pid, seed in zip(pids, client_seeds(cfg.seed, rnd, np.asarray(pids)), strict=True):
            data = client_data(p.data, int(pid))
            t0 = time.perf_counter()
            local_update(model, weights, data, cfg.train, int(seed))
            total += time.perf_counter() - t0
    return total


def pure_batched_s(p: SimulationPlan) -> float:
    """The cohort kernel alone per round: index rows, seeds, data copy and ``train_cohort``, on the
    run's ``engine.threads`` (a fair denominator when a run sets more than one)."""
    cfg = p.cfg
    torch.set_num_threads(p.scenario.engine.threads)
    model = build_model(cfg.task)
    weights, ds, parts, total = get_weights(model), dataset(p.data), partitions(p.data), 0.0
    for rnd in range(1, cfg.rounds + 1):
        pids = np.asarray(sample_clients(cfg.seed, rnd, cfg.num_clients, cfg.per_round), dtype=np.int64)
        t0 = time.perf_counter()
        rows, sizes = parts.rows(pids)
        data = CohortData.from_padded(ds.x_train, ds.y_train, rows, sizes, torch.device("cpu"))
        train_cohort(model, weights, data, cfg.train, client_seeds(cfg.seed, rnd, pids))
        total += time.perf_counter() - t0
    torch.set_num_threads(1)
    return total


@contextlib.contextmanager
def naming_timed(spent: list[float]) -> Iterator[None]:
    """Append the seconds the Flower transport spends naming its nodes (``_learn``) to ``spent``."""
    saved = GridTransport._learn

    def timed(self: GridTransport, nodes: list[int]) -> None:
        t0 = time.perf_counter()
        saved(self, nodes)
        spent.append(time.perf_counter() - t0)

    GridTransport._learn = timed
    try:
        yield
    finally:
        GridTransport._learn = saved


def run_flower_named(p: SimulationPlan) -> dict[str, float]:
    """A Flower-engine run that also reports ``naming_s``: the seconds spent mapping nodes to
    partitions before round 1."""
    spent: list[float] = []
    with naming_timed(spent):
        out = run_stamen("flower", p)
    return {**out, "naming_s": sum(spent)}


@contextlib.contextmanager
def partition_query() -> Iterator[None]:
    """The Flower engine as before: no recorded mapping, so its ServerApp queries every node."""
    saved = flower_engine.recording_partitions
    flower_engine.recording_partitions = contextlib.nullcontext
    try:
        yield
    finally:
        flower_engine.recording_partitions = saved


def measure_inprocess(args: Any) -> dict[str, dict[int, dict[str, float]]]:
    """Every in-process path at every ``args.rounds`` (median of ``args.repeats``)."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for name, extra in INPROCESS.items():
        rows[name] = {}
        for r in args.rounds:
            p = plan(args.clients, args.per_round, r, extra)
            rows[name][r] = medians([run_stamen("inprocess", p) for _ in range(args.repeats)])
    return rows


def measure_flower(args: Any) -> dict[str, dict[int, dict[str, float]]]:
    """stamen's Flower engine and the plain app at every ``args.flower_rounds``."""
    rows: dict[str, dict[int, dict[str, float]]] = {FLOWER: {}, PLAIN: {}}
    for r in args.flower_rounds:
        p = plan(args.clients, args.per_round, r, ())
        reps = range(args.flower_repeats)
        rows[FLOWER][r] = medians([run_flower_named(p) for _ in reps])
        rows[PLAIN][r] = medians([run_plain(args.clients, args.per_round, r) for _ in reps])
    return rows


def overheads(args: Any, rows: dict[str, dict[int, dict[str, float]]]) -> dict[str, float]:
    """In-process wall / pure local-training compute of the same clients (medians)."""
    out: dict[str, float] = {}
    first = args.rounds[0]
    p = plan(args.clients, args.per_round, first, INPROCESS["in-process, per-client"])
    pure = statistics.median(pure_serial_s(p) for _ in range(args.repeats))
    out[f"per-client, {first} rounds"] = rows["in-process, per-client"][first]["wall_s"] / pure
    for r in args.rounds:
        p = plan(args.clients, args.per_round, r, INPROCESS["in-process, cohort-batched"])
        pure = statistics.median(pure_batched_s(p) for _ in range(args.repeats))
        out[f"cohort-batched, {r} rounds"] = rows["in-process, cohort-batched"][r]["wall_s"] / pure
    return out


def ratios(rows: dict[str, dict[int, dict[str, float]]]) -> None:
    """Add ``x_plain_whole_run`` (same rounds) and ``x_plain_steady`` to every row, in place.

    The steady anchor is the plain app's run with the most rounds (its best steady estimate)."""
    plain = rows[PLAIN]
    steady = plain[max(plain)]["steady_updates_per_s"]
    for runs in rows.values():
        for r, row in runs.items():
            row["x_plain_steady"] = row["steady_updates_per_s"] / steady
            if r in plain:
                row["x_plain_whole_run"] = row["updates_per_s"] / plain[r]["updates_per_s"]


def query_check(args: Any) -> dict[str, float]:
    """First round of the Flower engine with the former per-node query (one run)."""
    p = plan(args.clients, args.per_round, min(args.flower_rounds), ())
    with partition_query():
        return run_flower_named(p)


def naming_only(args: Any) -> dict[str, Any]:
    """``--naming-only``: the Flower engine with the former query (before) and the recorded mapping
    (after), interleaved, ``args.flower_repeats`` each, at the smallest ``--flower-rounds``."""
    p = plan(args.clients, args.per_round, min(args.flower_rounds), ())
    before: list[dict[str, float]] = []
    after: list[dict[str, float]] = []
    for _ in range(args.flower_repeats):
        with partition_query():
            before.append(run_flower_named(p))
        after.append(run_flower_named(p))
    for name, runs in (("before (query)", before), ("after (recorded mapping)", after)):
        cells = ", ".join(f"wall {r['wall_s']:.1f} s / naming {r['naming_s']:.2f} s" for r in runs)
        print(f"{name}: {cells}")
    return {
        "rounds": min(args.flower_rounds),
        "before": before,
        "after": after,
        "before_median": medians(before),
        "after_median": medians(after),
    }


def goals(rows: dict[str, dict[int, dict[str, float]]], over: dict[str, float]) -> dict[str, Any]:
    """The issue's goals: >= 5,000 updates/s, >= 10x plain Flower per round, overhead <= 1.2."""
    batched = rows["in-process, cohort-batched"]
    most = max(batched)
    best_steady = max(r[most]["steady_updates_per_s"] for n, r in rows.items() if n in INPROCESS)
    return {
        "updates_per_s_5000": {
            "steady": best_steady,
            "whole_run": batched[most]["updates_per_s"],
            "met": best_steady >= 5000 and batched[most]["updates_per_s"] >= 5000,
        },
        "x_plain_steady_10": {
            "value": batched[most]["x_plain_steady"],
            "met": batched[most]["x_plain_steady"] >= 10,
        },
        "overhead_1_2": {
            "value": over[f"cohort-batched, {most} rounds"],
            "met": over[f"cohort-batched, {most} rounds"] <= 1.2,
        },
    }


def report(
    rows: dict[str, dict[int, dict[str, float]]], over: dict[str, float], result: dict[str, Any]
) -> None:
    """The table BENCHMARKS.md section 1 shows."""
    print(
        "| path | rounds | wall s | updates/s (whole run) | x plain (whole run) | steady round s "
        "| updates/s (steady) | x plain (steady) | first round s | final acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        for r, x in sorted(runs.items()):
            whole = f"{x['x_plain_whole_run']:.1f}" if "x_plain_whole_run" in x else "—"
            print(
                f"| {name} | {r} | {x['wall_s']:.2f} | {x['updates_per_s']:.0f} | {whole} "
                f"| {x['steady_round_s']:.3f} | {x['steady_updates_per_s']:.0f} | {x['x_plain_steady']:.1f} "
                f"| {x['first_round_s']:.2f} | {x['accuracy']:.4f} |"
            )
    for k, v in over.items():
        print(f"overhead (wall / pure local training), {k}: {v:.2f}x (goal <= 1.2)")
    if "query_check" in result:
        q, now = result["query_check"], rows[FLOWER][min(rows[FLOWER])]
        print(
            f"Flower engine, naming the nodes: {q['naming_s']:.3f} s with the per-node query (before; "
            f"run wall {q['wall_s']:.1f} s), {now['naming_s']:.3f} s from the recorded mapping (after; "
            f"run wall {now['wall_s']:.1f} s)"
        )
    print(f"goals: {result['goals']}")
    print(f"load average before/after: {result['load_before']} / {result['load_after']}")


def main(argv: list[str] | None = None) -> int:
    ap = parser(
        __doc__, quick="100 clients, 20 per round, fewer rounds, one repeat", out="engine_throughput.json"
    )
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, nargs="+", default=[3, 100], help="in-process round counts")
    ap.add_argument(
        "--flower-rounds", type=int, nargs="+", default=[3, 20], help="Flower paths' round counts"
    )
    ap.add_argument("--repeats", type=int, default=3, help="in-process repetitions (median)")
    ap.add_argument("--flower-repeats", type=int, default=2, help="Flower-path repetitions (median)")
    ap.add_argument("--no-query-check", action="store_true", help="skip the former-query Flower run")
    ap.add_argument("--naming-only", action="store_true", help="only the Flower engine, query vs mapping")
    args = ap.parse_args(argv)
    prov = Provenance.capture(argv, script=__file__)
    if args.naming_only:
        load = [round(x, 2) for x in os.getloadavg()]
        res = naming_only(args)
        res["load_before"], res["load_after"] = load, [round(x, 2) for x in os.getloadavg()]
        prov.write(
            out_path(args), {"scenario": {"clients": args.clients, "per_round": args.per_round}, **res}
        )
        return 0
    if args.quick:
        args.clients, args.per_round, args.rounds, args.flower_rounds = 100, 20, [3, 10], [3, 5]
        args.repeats = args.flower_repeats = 1
    load_before = [round(x, 2) for x in os.getloadavg()]
    for extra in list(INPROCESS.values())[:2]:  # warm-up: imports and first-call costs of both paths
        run_stamen("inprocess", plan(args.clients, args.per_round, 1, extra))
    rows = {**measure_inprocess(args), **measure_flower(args)}
    ratios(rows)
    over = overheads(args, rows)
    result: dict[str, Any] = {
        "scenario": {
            "clients": args.clients,
            "per_round": args.per_round,
            "dataset": "mnist1d",
            "model": "mlp 40-64-10",
            "local_epochs": 2,
            "batch_size": 16,
            "lr": 0.2,
        },
        "rows": {name: {str(r): x for r, x in runs.items()} for name, runs in rows.items()},
        "overhead": over,
    }
    if not args.no_query_check:
        result["query_check"] = query_check(args)
    result["goals"] = goals(rows, over)
    result["load_before"], result["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
    result["machine"] = "2 cores shared with other jobs (see load averages)"
    prov.write(out_path(args), result)
    report(rows, over, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
