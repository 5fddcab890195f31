"""In-process engine paths: client updates/s of the per-client loop (anchor), the cohort-batched
path, and both in 2 worker processes, on the engine benchmark's scenario, in one run.

Scenario: mnist1d, 1000 clients (Dirichlet 0.5), 100 per round, MLP 40-64-10, 2 local epochs of
batch 16, dense codec, FedAvg; envelopes, validation and aggregation included (the whole engine).
Anchor: the per-client loop (``engine.batching=off``, one process), measured side by side.
Reported: whole-run updates/s (median of ``--repeats``), median steady-state round time (rounds
after the first) and the ratio to the anchor, and the peak RSS of this process and of its workers.

    .venv/bin/python benchmarks/bench_engine_paths.py            # 1000 clients, 100/round, 3 rounds
    .venv/bin/python benchmarks/bench_engine_paths.py --quick    # 100 clients, 20/round
    .venv/bin/python benchmarks/bench_engine_paths.py --fresh    # every run in a new process

``--fresh`` runs every repeat of every path in a new Python process, as ``stamen simulate`` does: its
whole-run figures then include the imports, the data loading and the worker processes' start
(forks of the engine; the forkserver path its torch import), which the default mode pays once for
all paths. The forkserver path is measured with ``--fresh`` only.

Writes benchmarks/results/engine_paths.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _provenance import Provenance, out_path, parser

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

PATHS: dict[str, tuple[str, ...]] = {
    "per-client (anchor)": ("engine.batching=off", "engine.workers=1"),
    "cohort-batched": ("engine.batching=on", "engine.workers=1"),
    "per-client, 2 workers": ("engine.batching=off", "engine.workers=2"),
    "cohort-batched, 2 workers": ("engine.batching=on", "engine.workers=2"),
    # the same workers started from the forkserver (the start before forks of the engine, and what
    # a CUDA run or a process with other threads alive still uses): compared in the same run
    "per-client, 2 workers, forkserver": ("engine.batching=off", "engine.workers=2"),
}


def _start_method(name: str) -> None:
    """Workers started from the forkserver for the path that names it (else as the engine does)."""
    if name.endswith("forkserver"):
        from stamen.simulations import parallel

        parallel._fork_is_safe = lambda device: False


def plan(clients: int, per_round: int, rounds: int, extra: tuple[str, ...]) -> SimulationPlan:
    """The engine benchmark's scenario (see the module docstring) with ``extra`` overrides."""
    overrides = [
        "data.dataset=mnist1d",
        f"data.num_samples={max(50 * clients, 4000)}",
        "data.partition=dirichlet",
        "data.alpha=0.5",
        f"data.num_clients={clients}",
        f"clients.per_round={per_round}",
        f"rounds={rounds}",
        "clients.local_epochs=2",
        "clients.batch_size=16",
        "model.hidden=64",
        f"eval.every={rounds}",
        *extra,
    ]
    return SimulationPlan.from_scenario(load_scenario("smoke", overrides))


def measure(p: SimulationPlan) -> dict[str, float]:
    """Whole-run wall seconds, median round seconds after the first, final accuracy."""
    t0 = time.perf_counter()
    res = run_engine("inprocess", p)
    wall = time.perf_counter() - t0
    steady = [r.wall_s for r in res.rounds[1:]] or [res.rounds[0].wall_s]
    path = res.extra["engine_path"]  # which path ran: rounds the workers trained, forked or not
    return {
        "wall_s": wall,
        "round_s": statistics.median(steady),
        "accuracy": float(res.rounds[-1].accuracy),
        "rounds_in_workers": float(path["rounds_in_workers"]),
        "forked": float(path["worker_start"] == "fork"),
    }


def measure_fresh(name: str, clients: int, per_round: int, rounds: int) -> dict[str, float]:
    """:func:`measure` of path ``name`` in a new Python process (its imports and start-up included)."""
    argv = [sys.executable, __file__, "--one", name, "--clients", str(clients), "--per-round", str(per_round)]
    done = subprocess.run(
        [*argv, "--rounds", str(rounds)], capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name}: fresh run failed: {done.stderr[-2000:]}")
    measured: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def measure_paths(args: argparse.Namespace) -> dict[str, Any]:
    """Every path's medians over ``args.repeats`` runs (the paths interleaved: one run of each per
    repeat), with updates/s and the ratios to the anchor."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
    for _ in range(args.repeats):
        for name, extra in PATHS.items():
            if args.fresh:
                runs[name].append(measure_fresh(name, args.clients, args.per_round, args.rounds))
            elif not name.endswith("forkserver"):  # one process: its forkserver is warm after once
                runs[name].append(measure(plan(args.clients, args.per_round, args.rounds, extra)))
    rows: dict[str, Any] = {}
    for name, done in runs.items():
        if done:
            rows[name] = {k: statistics.median(r[k] for r in done) for k in done[0]}
            rows[name]["updates_per_s"] = args.rounds * args.per_round / rows[name]["wall_s"]
            rows[name]["round_updates_per_s"] = args.per_round / rows[name]["round_s"]
    anchor = rows["per-client (anchor)"]
    for row in rows.values():
        row["ratio_whole_run"] = anchor["wall_s"] / row["wall_s"]
        row["ratio_per_round"] = anchor["round_s"] / row["round_s"]
    return rows


def report(rows: dict[str, Any], rss: dict[str, float]) -> None:
    """The paths' table and the peak memory, printed."""
    print("| path | updates/s (whole run) | x anchor | steady round s | x anchor | final acc |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['updates_per_s']:.0f} | {r['ratio_whole_run']:.2f} | {r['round_s']:.3f} "
            f"| {r['ratio_per_round']:.2f} | {r['accuracy']:.4f} |"
        )
    ran = ", ".join(
        f"{n}: {r['rounds_in_workers']:.0f} rounds in workers, forked {r['forked']:.0f}"
        for n, r in rows.items()
    )
    print(f"({ran})")
    own, child = rss["self_mib"], rss["largest_child_mib"]
    print(f"peak RSS: this process {own:.0f} MiB, largest worker {child:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="100 clients, 20 per round", out="engine_paths.json")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="repetitions per path (median)")
    ap.add_argument("--fresh", action="store_true", help="every run in a new process")
    ap.add_argument("--one", choices=list(PATHS), help=argparse.SUPPRESS)  # a --fresh child
    args = ap.parse_args(argv)
    if args.one is not None:
        _start_method(args.one)
        print(json.dumps(measure(plan(args.clients, args.per_round, args.rounds, PATHS[args.one]))))
        return 0
    prov = Provenance.capture(argv, script=__file__)
    if args.quick:
        args.clients, args.per_round = 100, 20
    if not args.fresh:
        measure(plan(args.clients, args.per_round, 1, PATHS["cohort-batched"]))  # warm caches and imports
    rows = measure_paths(args)
    rss = {
        "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    scenario = {"clients": args.clients, "per_round": args.per_round, "rounds": args.rounds}
    result = {
        "scenario": scenario,
        "repeats": args.repeats,
        "fresh": args.fresh,
        "paths": rows,
        "peak_rss": rss,
    }
    prov.write(out_path(args), {**result, "machine": "2 cores, loaded by other jobs"})
    report(rows, rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
