"""The asynchronous driver's client draw under availability windows, against the number of clients.

A windowed asynchronous run draws each task's client uniformly among the idle, ready ones: 64 random
tries, then a scan of the client list when they all miss, which under windows is common (few clients
are inside a window at once). The scan used to ask every client; the in-process transport now says
which clients are inside a window with one array operation (``ClientTiming.available_mask``) and the
scan asks only those (``async_state.idle_clients``). The run is the same (checked here: final
weights bit for bit, every record). Anchor, same process, interleaved: the same run with the
transport's ``ready_indices`` removed (the full scan, as before).

Scenario: ``scale-100k-quick`` (mnist1d pool, 40 samples a client, MLP 40-64-10, 5 local epochs)
with ``data.num_clients`` = 1,000 / 10,000 / 100,000, FedBuff (concurrency 20, buffer 5), 20
versions, ``diurnal`` windows of 1 h (about 1 in 24 clients ready at a time), per-client loop.

    .venv/bin/python benchmarks/bench_async_windows.py --repeats 5   # ~1 min
    .venv/bin/python benchmarks/bench_async_windows.py --quick       # 1,000 and 10,000 clients, 1 repeat

Writes benchmarks/results/async_windows.json.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from _provenance import Provenance, out_path, parser

from stamen.server.checkpoint_compare import records_equal
from stamen.server.driver import async_driver
from stamen.simulations.engines import inprocess, run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

COMMON = [
    "server.mode=fedbuff",
    "server.concurrency=20",
    "server.buffer_size=5",
    "rounds=20",
    "timing.availability=diurnal",
    "timing.diurnal_on_hours=1",
    "engine.batching=off",
    "eval.every=20",
]


def one(clients: int, narrowed: bool) -> tuple[dict[str, float], Any]:
    """Wall seconds of the run and of its draws (time inside ``AsyncDriver._draw``), and the run."""
    plan = SimulationPlan.from_scenario(
        load_scenario("scale-100k-quick", [f"data.num_clients={clients}", *COMMON])
    )
    draw, spent = async_driver.AsyncDriver._draw, [0.0]

    def timed(self: Any, pool: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return draw(self, pool)
        finally:
            spent[0] += time.perf_counter() - t0

    saved = inprocess.VirtualClockTransport.ready_indices
    async_driver.AsyncDriver._draw = timed  # type: ignore[method-assign]
    if not narrowed:
        inprocess.VirtualClockTransport.ready_indices = lambda self, c: None  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        result = run_engine("inprocess", plan)
        wall = time.perf_counter() - t0
    finally:
        async_driver.AsyncDriver._draw = draw  # type: ignore[method-assign]
        inprocess.VirtualClockTransport.ready_indices = saved  # type: ignore[method-assign]
    return {"wall_s": wall, "draw_s": spent[0]}, result


def same(a: Any, b: Any) -> bool:
    """The two runs agree: every record (but wall time) and the final weights bit for bit."""
    weights = all(np.array_equal(a.weights[k], b.weights[k]) for k in b.weights)
    return bool(records_equal(a.rounds, b.rounds)) and weights


def measure(clients: int, repeats: int) -> dict[str, Any]:
    """Interleaved narrowed / full-scan runs; medians."""
    runs: dict[str, list[dict[str, float]]] = {"narrowed": [], "scan": []}
    identical = True
    for _ in range(repeats):
        fast, a = one(clients, narrowed=True)
        slow, b = one(clients, narrowed=False)
        runs["narrowed"].append(fast)
        runs["scan"].append(slow)
        identical = identical and same(a, b)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "draw_s")} for k, v in runs.items()}
    return {"clients": clients, "identical": identical, "median": med, "runs": runs}


def main() -> None:
    """Measure, print the table, write the results JSON."""
    p = parser(__doc__, quick="1,000 and 10,000 clients, 1 repeat", out="async_windows.json")
    p.add_argument("--repeats", type=int, default=5, help="interleaved pairs per size (default 5)")
    args = p.parse_args()
    prov = Provenance.capture()
    sizes, repeats = ([1_000, 10_000], 1) if args.quick else ([1_000, 10_000, 100_000], args.repeats)
    one(1_000, narrowed=True)  # warm-up: imports, the cached pool, torch's first steps
    rows = []
    for n in sizes:
        rows.append(measure(n, repeats))
        print(f"{n:,} clients done", flush=True)
    head = "| clients | draws: narrowed | draws: full scan (anchor) | × | run: narrowed | run: full scan | × "
    print(head + "| same run |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        f, s = r["median"]["narrowed"], r["median"]["scan"]
        print(
            f"| {r['clients']:,} | {f['draw_s']:.3f} s | {s['draw_s']:.3f} s "
            f"| {s['draw_s'] / f['draw_s']:.1f} "
            f"| {f['wall_s']:.2f} s | {s['wall_s']:.2f} s | {s['wall_s'] / f['wall_s']:.2f} "
            f"| {'yes' if r['identical'] else 'NO'} |"
        )
    prov.write(
        out_path(args),
        {"scenario": "scale-100k-quick", "overrides": COMMON, "repeats": repeats, "rows": rows},
    )


if __name__ == "__main__":
    main()
