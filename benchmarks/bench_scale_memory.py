"""Peak RSS and start-up time of the in-process engine against the number of clients, same cohort.

Each run is a fresh process (so peaks do not mix), the ``scale-100k`` scenario with its number of
clients overridden: mnist1d, one shared pool of 80,000 training samples (``data.num_samples =
100000``; generated once and cached on disk), every client drawing 40 samples from it (Dirichlet
alpha 0.5, ``partition = "pool"``), ``--per-round`` clients per round (default 1,000), ``--rounds``
rounds (default 2), MLP 40-64-10, cohort-batched, one process. Each size is run ``--repeats`` times
(default 3, sizes interleaved) and the median reported. Anchor: the smallest size, measured in the
same run; each median peak is reported as its ratio to it (the issue's goal: flat within 10 %).

Start-up is timed from the parent's ``spawn`` of the child (interpreter start and imports
included): ``plan`` is when the run is planned (data set, partitions, initial model), ``first
round`` when round 1 has finished.

    .venv/bin/python benchmarks/bench_scale_memory.py                  # 1k, 10k, 100k clients
    .venv/bin/python benchmarks/bench_scale_memory.py --quick          # 1k and 100k, one run each

Writes benchmarks/results/scale_memory.json.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _provenance import Provenance, out_path, parser

SCENARIO = "scale-100k"
FIGURES = ("peak_rss_mib", "plan_s", "first_round_s", "wall_s")


def child(clients: int, per_round: int, rounds: int, spawned: float) -> dict[str, float]:
    """Run the engine once in this process: its peak RSS (MiB) and times (s since ``spawned``)."""
    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    overrides = [
        f"data.num_clients={clients}",
        f"clients.per_round={per_round}",
        f"rounds={rounds}",
        f"eval.every={rounds}",
    ]
    plan = SimulationPlan.from_scenario(load_scenario(SCENARIO, overrides))
    plan_s = time.time() - spawned
    first: list[float] = []
    run_engine("inprocess", plan, lambda rec: first.append(time.time() - spawned))
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "plan_s": plan_s,
        "first_round_s": first[0],
        "wall_s": time.time() - spawned,
    }


def run_child(clients: int, per_round: int, rounds: int) -> dict[str, float]:
    """One fresh process of :func:`child`."""
    cmd = [sys.executable, __file__, "--child", str(clients), "--per-round", str(per_round)]
    cmd += ["--rounds", str(rounds), "--spawned", repr(time.time())]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The median of every figure over ``runs``, and the runs themselves."""
    return {**{k: statistics.median(r[k] for r in runs) for k in FIGURES}, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="1,000 and 100,000 clients, one run each", out="scale_memory.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", type=int, default=0, help="internal: run one size in this process")
    ap.add_argument("--spawned", type=float, default=0.0, help="internal: the parent's spawn time")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.per_round, args.rounds, args.spawned or time.time())))
        return 0
    prov = Provenance.capture(argv, script=__file__)
    sizes = sorted({min(args.sizes), max(args.sizes)} if args.quick else set(args.sizes))
    repeats = 1 if args.quick else args.repeats
    run_child(sizes[0], args.per_round, 1)  # warm-up: the pool generated and cached, files in page cache
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for _ in range(repeats):  # interleaved, so load changes spread over every size
        for n in sizes:
            runs[n].append(run_child(n, args.per_round, args.rounds))
    rows = {n: medians(r) for n, r in runs.items()}
    anchor = rows[sizes[0]]["peak_rss_mib"]
    for row in rows.values():
        row["ratio_to_smallest"] = row["peak_rss_mib"] / anchor
    setting = {"scenario": SCENARIO, "per_round": args.per_round, "rounds": args.rounds, "repeats": repeats}
    prov.write(out_path(args), {**setting, "rows": rows})
    print_table(rows)
    return 0


def print_table(rows: dict[int, dict[str, Any]]) -> None:
    """The BENCHMARKS.md table (medians)."""
    print("| clients | peak RSS MiB | x smallest | planned after s | round 1 done after s | wall s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(
            f"| {n:,} | {r['peak_rss_mib']:.0f} | {r['ratio_to_smallest']:.3f} | {r['plan_s']:.1f} "
            f"| {r['first_round_s']:.1f} | {r['wall_s']:.1f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
