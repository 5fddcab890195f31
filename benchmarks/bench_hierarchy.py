"""Hierarchical vs flat aggregation: same model for FedAvg, bytes into the root, latency per level,
aggregation time, and one robust composition under attack.

Anchor: the flat run of the same scenario, measured in the same process. Part 1 runs the engine
benchmark's scenario (mnist1d, MLP 40-64-10, Dirichlet(0.5); 1000 clients, 100 per round, 3 rounds)
flat and with 10 regions (``modulo``), both FedAvg: the final models' max abs difference, bytes into
the root per round (flat: every client's envelope; hierarchical: one dense envelope per region) and
the simulated latency of each level (level 1: slowest client, from the in-process timing model;
level 2: the root-ingress link model, 100 Mbit/s + 20 ms, for both). Part 2 times the aggregation
alone on one (n, d) stack: flat FedAvg vs the hierarchy (edge FedAvg per region + forward envelope
+ root FedAvg), median of repeats. Part 3: 20 % attackers (``--attack``, default ``sign_flip`` with
scale 6) on the ``smoke`` scenario's digits task (IID, 100 clients, 40 per round, 20 rounds of 5
local epochs) against flat median, median of medians and FedAvg-then-median (4 regions of about 10);
flat FedAvg with and without the attack as anchors.

    .venv/bin/python benchmarks/bench_hierarchy.py            # full (a few minutes on 2 loaded cores)
    .venv/bin/python benchmarks/bench_hierarchy.py --quick    # 100 clients, 20 per round (CI smoke)

Writes benchmarks/results/hierarchy.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np
from _provenance import Provenance, out_path, parser
from bench_engine_paths import plan
from threadpoolctl import threadpool_limits

from stamen.protocols import TensorInfo
from stamen.server.aggregators import create
from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.hierarchy import HierarchyRule
from stamen.server.aggregators.hierarchy_groups import region_function
from stamen.server.aggregators.hierarchy_link import Link
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

H = "aggregation.hierarchy."


def hier(groups: int, edge: str = "fedavg") -> tuple[str, ...]:
    """Overrides of a two-level run with ``groups`` regions (``modulo``) and ``edge`` per region."""
    return (f"{H}mode=regions", f"{H}groups={groups}", f"{H}edge_rule={edge}")


def engine_run(clients: int, per_round: int, rounds: int, extra: tuple[str, ...]) -> dict[str, Any]:
    """One in-process run: per-round records and the final weights."""
    t0 = time.perf_counter()
    res = run_engine("inprocess", plan(clients, per_round, rounds, extra))
    return {"wall_s": time.perf_counter() - t0, "rounds": res.rounds, "weights": res.weights}


def equality(args: Any, groups: int) -> dict[str, Any]:
    """Part 1: flat vs hierarchical FedAvg on the engine scenario."""
    flat = engine_run(args.clients, args.per_round, args.rounds, ())
    two = engine_run(args.clients, args.per_round, args.rounds, hier(groups))
    diff = max(float(np.max(np.abs(flat["weights"][k] - two["weights"][k]))) for k in flat["weights"])
    link = Link()
    rows = []
    for f, h in zip(flat["rounds"], two["rounds"], strict=True):
        rows.append(
            {
                "round": f.round,
                "bytes_root_flat": f.bytes_up,
                "bytes_root_hier": h.hier_bytes_root,
                "regions": h.hier_regions,
                "latency_edge_s": h.hier_latency_edge_s,
                "latency_root_hier_s": h.hier_latency_root_s,
                "latency_root_flat_s": link.seconds(f.bytes_up),
                "accuracy_flat": f.accuracy,
                "accuracy_hier": h.accuracy,
            }
        )
    return {"groups": groups, "max_abs_weight_diff": diff, "rounds": rows}


def agg_times(n: int, d: int, groups: int, repeats: int, threads: int | None) -> dict[str, Any]:
    """Part 2: seconds of one flat FedAvg and one hierarchical FedAvg on the same ``(n, d)`` stack,
    with numpy's BLAS at its default thread count (``threads=None``) or limited to ``threads``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.uniform(10, 50, n)
    senders = tuple(f"client-{i}" for i in rng.choice(10 * n, n, replace=False))
    ctx = RoundContext(1, (TensorInfo("w", (d,), "float32"),), np.zeros(d, np.float32), senders)
    flat = create("fedavg")
    region_of = region_function("modulo", groups, 10 * n)
    two = HierarchyRule(create("fedavg"), create("fedavg"), region_of, Link(), edge_mean="weighted")
    two.begin_round(ctx)

    def median_s(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x, w)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with threadpool_limits(threads):
        tf, th = median_s(flat), median_s(two)
    diff = float(np.max(np.abs(flat(x, w) - two(x, w))))
    return {
        "n": n,
        "d": d,
        "blas_threads": threads,
        "flat_s": tf,
        "hier_s": th,
        "ratio": th / tf,
        "max_abs_diff": diff,
    }


def attack_run(args: Any, extra: tuple[str, ...]) -> float:
    """Final test accuracy of one digits run (IID, MLP 64-32-10, 5 local epochs) with ``extra``."""
    overrides = [
        f"data.num_clients={args.attack_clients}",
        f"clients.per_round={args.attack_per_round}",
        f"rounds={args.attack_rounds}",
        f"eval.every={args.attack_rounds}",
        "clients.local_epochs=5",
        *extra,
    ]
    res = run_engine("inprocess", SimulationPlan.from_scenario(load_scenario("smoke", overrides)))
    return float(res.rounds[-1].accuracy)


def attack(args: Any, groups: int) -> dict[str, float]:
    """Part 3: final accuracy under ``args.attack`` (20 % attackers) per composition."""
    bad = (f"attack.kind={args.attack}", "attack.fraction=0.2", *args.attack_params)
    cells = {
        "fedavg (flat, undefended)": (),
        "median (flat)": ("aggregation.rule=median",),
        f"median of medians ({groups} regions)": ("aggregation.rule=median", *hier(groups, "median")),
        f"fedavg then median ({groups} regions)": ("aggregation.rule=median", *hier(groups, "fedavg")),
    }
    out = {label: attack_run(args, (*bad, *extra)) for label, extra in cells.items()}
    out["fedavg (flat, no attack)"] = attack_run(args, ())
    return out


def report(eq: dict[str, Any], times: list[dict[str, float]], acc: dict[str, float]) -> None:
    """Print the figures next to their flat anchors."""
    print(f"FedAvg, {eq['groups']} regions vs flat: max |w_hier - w_flat| = {eq['max_abs_weight_diff']:.3g}")
    for r in eq["rounds"]:
        hier, flat = r["bytes_root_hier"], r["bytes_root_flat"]
        print(
            f"  round {r['round']}: bytes into the root {hier:,} vs flat {flat:,} ({flat / hier:.1f}x fewer)"
        )
        print(
            f"    level 1 {r['latency_edge_s']:.2f} s; level 2 {r['latency_root_hier_s'] * 1e3:.1f} ms "
            f"vs flat root ingress {r['latency_root_flat_s'] * 1e3:.1f} ms"
        )
        print(f"    accuracy {r['accuracy_hier']:.4f} vs flat {r['accuracy_flat']:.4f}")
    for t in times:
        print(
            f"aggregation of ({t['n']}, {t['d']}), BLAS threads {t['blas_threads'] or 'default'}: "
            f"hierarchy {t['hier_s'] * 1e3:.2f} ms "
            f"vs flat {t['flat_s'] * 1e3:.2f} ms ({t['ratio']:.1f}x), max abs diff {t['max_abs_diff']:.2g}"
        )
    for label, a in acc.items():
        print(f"  {label}: accuracy {a:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="100 clients, 20 per round, 2 rounds; small attack runs", out="hierarchy.json")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--attack", default="sign_flip")
    ap.add_argument("--attack-param", dest="attack_params", action="append", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    prov = Provenance.capture(argv, script=__file__)
    args.attack_params = args.attack_params or (["attack.scale=6"] if args.attack == "sign_flip" else [])
    args.attack_clients, args.attack_per_round, args.attack_rounds, attack_groups = 100, 40, 20, 4
    dims = [3274, 1 << 18]  # the MLP 40-64-10, and a 262k-parameter model
    if args.quick:
        args.clients, args.per_round, args.rounds, args.groups = 100, 20, 2, 4
        args.attack_clients, args.attack_per_round, args.attack_rounds, args.repeats = 40, 20, 3, 3
        attack_groups = 2
        dims = [3274]
    eq = equality(args, args.groups)
    times = [agg_times(args.per_round, d, args.groups, args.repeats, t) for d in dims for t in (None, 1)]
    acc = attack(args, attack_groups)
    report(eq, times, acc)
    prov.write(
        out_path(args),
        {
            "equality": eq,
            "aggregation_time": times,
            "attack": {
                "kind": args.attack,
                "params": args.attack_params,
                "fraction": 0.2,
                "groups": attack_groups,
                "accuracy": acc,
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
