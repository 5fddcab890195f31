"""An in-process path, this tree against another checkout, interleaved (issue #15).

The engine benchmark's scenario (``bench_engine_paths.plan``: mnist1d, 1000 clients, 100 per
round, MLP 40-64-10, dense codec, FedAvg), one process: cohort-batched (``engine.batching=on``), or
the per-client loop with ``--training per-client`` (``engine.batching=off``). Each measurement is
a fresh Python process (``--one``): a one-round warm-up run, the measured run of ``--rounds``
rounds, then the same clients' pure local training timed alone (``bench_engine_throughput.
pure_batched_s``: the cohort kernel; ``pure_serial_s``: the ``local_update`` calls). Reported per
tree, medians of ``--repeats`` (the trees alternate, so both see the same machine): steady
updates/s (median round after the first), whole-run updates/s, and the framework overhead =
whole-run wall / pure local training (the issue's goal: <= 1.2); then this tree's
ratio to the other. ``--other`` is a checkout with its own ``.venv`` (e.g. ``git worktree add``
of an older commit, its venv's editable finder pointing at it); without it only this tree runs.

    .venv/bin/python benchmarks/bench_batched_path.py --other /work/wt/base      # ~4 min
    .venv/bin/python benchmarks/bench_batched_path.py --quick                    # 100 clients, 20/round
    .venv/bin/python benchmarks/bench_batched_path.py --training per-client --rounds 3 --repeats 5 \
        --other /work/wt/base --out benchmarks/results/per_client_path.json

Writes benchmarks/results/batched_path.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _provenance import Provenance, out_path, parser

HERE = Path(__file__).resolve()


def one(clients: int, per_round: int, rounds: int, training: str) -> dict[str, float]:
    """``--one``: warm-up, the measured run, then its pure local training (this process's ``stamen``)."""
    from bench_engine_paths import plan
    from bench_engine_throughput import pure_batched_s, pure_serial_s, run_stamen

    batched = training == "batched"
    extra = ("engine.batching=" + ("on" if batched else "off"), "engine.workers=1")
    run_stamen("inprocess", plan(clients, per_round, 1, extra))
    p = plan(clients, per_round, rounds, extra)
    run = run_stamen("inprocess", p)
    pure = pure_batched_s(p) if batched else pure_serial_s(p)
    return {**run, "pure_kernel_s": pure, "overhead": run["wall_s"] / pure}


def measure(tree: Path, args: Any) -> dict[str, float]:
    """One ``--one`` measurement with ``tree``'s own interpreter (and so its ``stamen``)."""
    argv = [str(tree / ".venv/bin/python"), str(HERE), "--one", "--clients", str(args.clients)]
    argv += ["--per-round", str(args.per_round), "--rounds", str(args.rounds), "--training", args.training]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False, cwd=tree, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: measurement failed: {done.stderr[-2000:]}")
    measured: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def commit_of(tree: Path) -> str:
    """``git rev-parse --short HEAD`` of ``tree`` (+ ``-dirty`` when it has changes)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_all(args: Any) -> dict[str, Any]:
    """The trees' measurements, alternating, and their medians."""
    trees = {"this tree": HERE.parents[1]}
    if args.other:
        trees["other"] = Path(args.other).resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for k in range(args.repeats):
        for name, tree in trees.items():
            runs[name].append(measure(tree, args))
            print(f"repeat {k + 1}/{args.repeats}, {name}: {runs[name][-1]['steady_updates_per_s']:.0f}/s")
    out: dict[str, Any] = {}
    for name, tree in trees.items():
        med = {key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]}
        out[name] = {"tree": str(tree), "commit": commit_of(tree), "median": med, "runs": runs[name]}
    return out


def report(res: dict[str, Any]) -> None:
    """The table and the ratios BENCHMARKS.md shows."""
    print("| tree | commit | steady updates/s | whole-run updates/s | overhead (wall / pure training) |")
    print("|---|---|---:|---:|---:|")
    for name, r in res.items():
        m = r["median"]
        print(
            f"| {name} | {r['commit']} | {m['steady_updates_per_s']:.0f} | {m['updates_per_s']:.0f} "
            f"| {m['overhead']:.2f} |"
        )
    if "other" in res:
        a, b = res["this tree"]["median"], res["other"]["median"]
        print(
            f"this tree / other: steady {a['steady_updates_per_s'] / b['steady_updates_per_s']:.2f}x, "
            f"whole run {a['updates_per_s'] / b['updates_per_s']:.2f}x; overhead goal <= 1.2"
        )


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="100 clients, 20 per round, 10 rounds, 1 repeat", out="batched_path.json")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--other", default="", help="another checkout (with its .venv) to run interleaved")
    ap.add_argument("--training", choices=("batched", "per-client"), default="batched")
    ap.add_argument("--one", action="store_true", help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.clients, args.per_round, args.rounds, args.training)))
        return 0
    if args.quick:
        args.clients, args.per_round, args.rounds, args.repeats = 100, 20, 10, 1
    prov = Provenance.capture(argv, script=__file__)
    t0, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    res = run_all(args)
    meta = {"load_before": load, "load_after": [round(x, 2) for x in os.getloadavg()]}
    meta["wall_s"] = time.perf_counter() - t0
    scenario = {"clients": args.clients, "per_round": args.per_round, "rounds": args.rounds}
    scenario["training"] = args.training
    prov.write(out_path(args), {"scenario": scenario, "trees": res, **meta})
    report(res)
    return 0


def argparse_hidden() -> str:
    """Help text of the internal ``--one`` flag."""
    return "internal: one measurement in this process, printed as JSON"


if __name__ == "__main__":
    sys.exit(main())
