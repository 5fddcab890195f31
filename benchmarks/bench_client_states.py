"""Clients' memory across rounds held in RAM vs spilled to disk: peak RSS and round time.

Scenario: ``scale-100k`` (mnist1d pool, 100,000 clients, MLP 40-64-10, cohort-batched) with a
stateful codec -- ``topk(0.1)`` then ``int8`` with error feedback, so every sampled client keeps a
float32 residual of the whole model (3,274 values, 13 KB) for the rest of the run --, ``--per-round``
clients per round (default 1,000) over ``--rounds`` rounds (default 8: up to 8,000 residuals, ~105
MB). Each setting runs in a fresh process (peaks do not mix), ``--repeats`` times interleaved,
medians reported:

- anchor: ``engine.state_memory_mb`` large enough to hold every state (1024, the default);
- bounded: ``engine.state_memory_mb = --bound`` (default 8), the least recently used states spilled
  to a temporary directory after each round.

Reported: peak RSS (MiB), the median steady round time, states spilled, and the final accuracy
(identical in both: spilling loses nothing).

    .venv/bin/python benchmarks/bench_client_states.py
    .venv/bin/python benchmarks/bench_client_states.py --quick     # 10,000 clients, 200 per round, 4 rounds

Writes benchmarks/results/client_states.json.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from typing import Any

from _provenance import Provenance, out_path, parser

SCENARIO = "scale-100k"
CODEC = ["codec.pipeline=topk,int8", "codec.topk.ratio=0.1", "codec.error_feedback=true"]


def child(clients: int, per_round: int, rounds: int, bound_mb: int) -> dict[str, float]:
    """One run in this process: peak RSS (MiB), steady round seconds, states spilled, accuracy."""
    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    overrides = [
        f"data.num_clients={clients}",
        f"clients.per_round={per_round}",
        f"rounds={rounds}",
        f"eval.every={rounds}",
        f"engine.state_memory_mb={bound_mb}",
        *CODEC,
    ]
    res = run_engine("inprocess", SimulationPlan.from_scenario(load_scenario(SCENARIO, overrides)))
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "round_s": statistics.median(r.wall_s for r in res.rounds[1:] or res.rounds),
        "spilled": float(res.extra["engine_path"]["client_states_spilled"]),
        "accuracy": float(res.rounds[-1].accuracy),
    }


def run_child(clients: int, per_round: int, rounds: int, bound_mb: int) -> dict[str, float]:
    """:func:`child` in a fresh process."""
    cmd = [sys.executable, __file__, "--child", str(bound_mb), "--clients", str(clients)]
    cmd += ["--per-round", str(per_round), "--rounds", str(rounds)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = parser(
        __doc__, quick="10,000 clients, 200 per round, 4 rounds, one run each", out="client_states.json"
    )
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--bound", type=int, default=8, help="engine.state_memory_mb of the bounded run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", type=int, default=-1, help="internal: run one bound (MiB) in this process")
    args = ap.parse_args(argv)
    if args.child >= 0:
        print(json.dumps(child(args.clients, args.per_round, args.rounds, args.child)))
        return 0
    prov = Provenance.capture(argv, script=__file__)
    if args.quick:
        args.clients, args.per_round, args.rounds, args.repeats = 10_000, 200, 4, 1
    settings = {"held (anchor, 1024 MiB)": 1024, f"bounded ({args.bound} MiB)": args.bound}
    run_child(args.clients, args.per_round, 1, 1024)  # warm-up: the pool generated and cached on disk
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for _ in range(args.repeats):  # interleaved
        for name, bound in settings.items():
            runs[name].append(run_child(args.clients, args.per_round, args.rounds, bound))
    rows: dict[str, Any] = {
        n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()
    }
    setting = {k: getattr(args, k) for k in ("clients", "per_round", "rounds", "bound", "repeats")}
    prov.write(out_path(args), {**setting, "codec": CODEC, "rows": rows, "runs": runs})
    print("| clients' memory | peak RSS MiB | steady round s | states spilled | final acc |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        cells = f"{r['peak_rss_mib']:.0f} | {r['round_s']:.3f} | {r['spilled']:.0f} | {r['accuracy']:.4f}"
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
