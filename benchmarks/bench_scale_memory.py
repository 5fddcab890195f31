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

Two more figures, each against its anchor in the same run: the engine's Python allocations per
client (``tracemalloc`` peak of one 50-client round at the largest size minus that at the smallest,
divided by the difference in clients; fresh processes), and the time to draw 1,000 clients' pool
samples (``PoolPartitioning.rows``, vectorised) against a per-client ``np.random.Generator`` doing the
same three steps (pfl-research's ``DirichletDataSampler``), median of 5.

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


def traced(clients: int) -> dict[str, float]:
    """Peak bytes of Python allocations (``tracemalloc``) of one 50-client round over ``clients``
    clients, its data set and caches already loaded by an untraced first run."""
    import tracemalloc

    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    overrides = [f"data.num_clients={clients}", "clients.per_round=50", "rounds=1", "eval.every=1"]
    scenario = load_scenario(SCENARIO, overrides)
    run_engine("inprocess", SimulationPlan.from_scenario(scenario))
    tracemalloc.start()
    run_engine("inprocess", SimulationPlan.from_scenario(scenario))
    return {"traced_peak_bytes": float(tracemalloc.get_traced_memory()[1])}


def draw_times(repeats: int = 5, clients: int = 1000) -> dict[str, float]:
    """Median seconds to draw ``clients`` clients' samples from the scale-100k pool: vectorised
    (``rows``) and with one ``np.random.Generator`` per client (the anchor)."""
    import numpy as np

    from stamen.simulations.pool import build_pool_partitioning

    labels = np.repeat(np.arange(10), 8000)  # mnist1d's pool: 80,000 samples, 10 balanced classes
    parts = build_pool_partitioning(labels, 100_000, 40, alpha=0.5, seed=0)
    pids = np.arange(clients)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]

    def per_client() -> None:
        for pid in range(clients):  # pfl-research's DirichletDataSampler, one generator per client
            rng = np.random.default_rng([0, pid])
            counts = rng.multinomial(40, rng.dirichlet(np.full(10, 0.5)))
            np.sort(np.concatenate([rng.choice(by_class[c], m) for c, m in enumerate(counts)]))

    out = {}
    for name, fn in (("vectorised_s", lambda: parts.rows(pids)), ("per_generator_s", per_client)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def run_child(clients: int, per_round: int, rounds: int, trace: bool = False) -> dict[str, float]:
    """One fresh process of :func:`child` (or of :func:`traced`)."""
    cmd = [sys.executable, __file__, "--child", str(clients), "--per-round", str(per_round)]
    cmd += ["--rounds", str(rounds), "--spawned", repr(time.time())] + (["--trace"] if trace else [])
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
    ap.add_argument("--trace", action="store_true", help="internal: the child measures tracemalloc")
    args = ap.parse_args(argv)
    if args.child and args.trace:
        print(json.dumps(traced(args.child)))
        return 0
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
    lo, hi = (run_child(n, args.per_round, 1, trace=True)["traced_peak_bytes"] for n in (sizes[0], sizes[-1]))
    state = {
        "traced_peak_bytes": {sizes[0]: lo, sizes[-1]: hi},
        "per_client": (hi - lo) / (sizes[-1] - sizes[0]),
    }
    draws = draw_times()
    prov.write(out_path(args), {**setting, "rows": rows, "python_state": state, "pool_draw_1000": draws})
    print_table(rows)
    print(f"Python allocations per client: {state['per_client']:.0f} bytes")
    print(
        f"1,000 clients' pool draws: {draws['vectorised_s'] * 1e3:.0f} ms vectorised, "
        f"{draws['per_generator_s'] * 1e3:.0f} ms with a generator per client "
        f"({draws['per_generator_s'] / draws['vectorised_s']:.1f}x)"
    )
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
