"""Where a cohort-batched round of the in-process engine goes: milliseconds per phase, per round.

Scenario: the engine benchmark's (``bench_engine_paths.plan``: mnist1d, 1000 clients, 100 per
round, MLP 40-64-10, dense codec, FedAvg), cohort-batched in one process. Each phase is timed with
``perf_counter`` around the engine's own function (the timers inflate the round slightly):
``configure`` (sampling and tasks), ``kernel`` (``train_rows``: index rows, batch orders, the
cohort steps), ``release`` (``release_row``: codec and envelope per client), ``trip`` (the simulated
timing model per client), ``accept`` (``UpdateCollector.add``: verify, decode, validate, stack) and
``finish``; ``other`` is the round's wall time minus those (aggregation, the record). The anchor is
the round's own wall time, and the budget of the issue's goal (5,000 updates/s = 20 ms a round of
100 clients) is printed beside it.

    .venv/bin/python benchmarks/bench_round_phases.py              # 20 rounds after a warm-up run
    .venv/bin/python benchmarks/bench_round_phases.py --quick      # 100 clients, 20 per round, 3 rounds
    .venv/bin/python benchmarks/bench_round_phases.py --threads 2 --out round_phases_2threads.json
    .venv/bin/python benchmarks/bench_round_phases.py --per-round 1000 --rounds 10 \
        --out round_phases_1000.json

``--threads N`` sets ``engine.threads`` (default 1, the engine's default).

Writes benchmarks/results/round_phases.json.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _provenance import Provenance, out_path, parser
from bench_engine_paths import plan

import stamen.server.driver.collect as collect
import stamen.server.driver.driver as driver
import stamen.simulations.engines.inprocess as inprocess
import stamen.simulations.engines.rows as rows
from stamen.simulations.engines import run_engine

PHASES: tuple[tuple[Any, str, str], ...] = (
    (driver.RoundDriver, "configure", "configure"),
    (rows, "train_rows", "kernel"),
    (rows, "release_row", "release"),
    (inprocess.InProcessTransport, "_trips", "trip"),
    (collect.UpdateCollector, "add", "accept"),
    (collect.UpdateCollector, "finish", "finish"),
)


@contextmanager
def timed(spent: dict[str, float]) -> Iterator[None]:
    """Every phase's function wrapped to add its seconds to ``spent`` (restored on exit)."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PHASES]

    def wrap(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0

        return inner

    for (owner, name, fn), (_, _, key) in zip(saved, PHASES, strict=True):
        setattr(owner, name, wrap(fn, key))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="100 clients, 20 per round, 3 rounds", out="round_phases.json")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="engine.threads (default 1)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    args = ap.parse_args(argv)
    prov = Provenance.capture(argv, script=__file__)
    clients, per_round = (100, 20) if args.quick else (args.clients, args.per_round)
    rounds = 3 if args.quick else args.rounds
    p = plan(
        clients,
        per_round,
        rounds,
        ("engine.batching=on", "engine.workers=1", f"engine.threads={args.threads}"),
    )
    run_engine("inprocess", p)  # warm caches and imports
    spent: dict[str, float] = collections.defaultdict(float)
    with timed(spent):
        res = run_engine("inprocess", p)
    wall = sum(r.wall_s for r in res.rounds)
    ms = {k: spent[k] / rounds * 1e3 for _, _, k in PHASES}
    ms["other"] = wall / rounds * 1e3 - sum(ms.values())
    result = {"clients": clients, "per_round": per_round, "rounds": rounds, "round_ms": wall / rounds * 1e3}
    result["threads"] = res.extra["engine_path"]["threads"]
    prov.write(out_path(args), {**result, "phase_ms": ms, "budget_ms_5000_per_s": per_round / 5000 * 1e3})
    print(f"round {result['round_ms']:.1f} ms (budget for 5,000 updates/s: {per_round / 5:.1f} ms)")
    print(f"  threads    {result['threads']}")
    for k, v in ms.items():
        print(f"  {k:10s} {v:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
