"""Peak RSS of the in-process engine against the number of clients, same per-round cohort.

Each size runs in a fresh process (so peaks do not mix): mnist1d with 25 samples per client (IID),
``--per-round`` clients per round (default 100), 2 rounds, MLP 40-64-10, cohort-batched, one
process. Anchor: the smallest size, measured in the same run; reported as the ratio of each peak
to it (the issue's goal: flat within 10 %). Note that the dataset itself grows with the clients
(25 samples x 40 float32 features each = 4 KB per client).

    .venv/bin/python benchmarks/bench_scale_memory.py                  # 1,000 and 10,000 clients
    .venv/bin/python benchmarks/bench_scale_memory.py --sizes 1000 10000 100000

Writes benchmarks/results/scale_memory.json.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from _provenance import Provenance, out_path, parser

SAMPLES_PER_CLIENT = 25


def child(clients: int, per_round: int) -> dict[str, float]:
    """Run the engine once in this process; its peak RSS (MiB) and wall seconds."""
    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    overrides = [
        "data.dataset=mnist1d",
        f"data.num_samples={SAMPLES_PER_CLIENT * clients}",
        f"data.num_clients={clients}",
        f"clients.per_round={per_round}",
        "rounds=2",
        "model.hidden=64",
        "eval.every=2",
        "engine.batching=on",
        "engine.workers=1",
    ]
    t0 = time.perf_counter()
    run_engine("inprocess", SimulationPlan.from_scenario(load_scenario("smoke", overrides)))
    wall = time.perf_counter() - t0
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="1,000 clients only", out="scale_memory.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--child", type=int, default=0, help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.per_round)))
        return 0
    prov = Provenance.capture(argv, script=__file__)
    sizes = [min(args.sizes)] if args.quick else sorted(args.sizes)
    rows = {}
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--per-round", str(args.per_round)]
        rows[n] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    anchor = rows[sizes[0]]["peak_rss_mib"]
    for row in rows.values():
        row["ratio_to_smallest"] = row["peak_rss_mib"] / anchor
    prov.write(
        out_path(args), {"per_round": args.per_round, "samples_per_client": SAMPLES_PER_CLIENT, "rows": rows}
    )
    print("| clients | peak RSS MiB | x smallest | wall s (2 rounds, incl. start) |")
    print("|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n:,} | {r['peak_rss_mib']:.0f} | {r['ratio_to_smallest']:.2f} | {r['wall_s']:.1f} |")
    return 0


def argparse_hidden() -> str:
    """Help text of the internal ``--child`` flag."""
    return "internal: run one size in this process and print its figures as JSON"


if __name__ == "__main__":
    sys.exit(main())
