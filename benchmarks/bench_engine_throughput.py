"""Engine throughput: client updates per second, ``inprocess`` vs ``flower``, same scenario, one run.

Anchor: the Flower engine (real ServerApp/ClientApp on Flower's Ray simulation engine) measured in the
same process on the same scenario. Also the ``inprocess`` overhead: its wall time divided by the pure
local-training compute it contains (the same ``local_update`` calls timed alone).

    .venv/bin/python benchmarks/bench_engine_throughput.py            # 1000 clients, 100/round, 3 rounds
    .venv/bin/python benchmarks/bench_engine_throughput.py --quick    # 100 clients, for a smoke check

Writes benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import statistics
import sys
import time

from _provenance import Provenance, out_path, parser
from bench_engine_paths import plan

from stamen.client.core import local_update
from stamen.server.sampling import sample_clients
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import client_data
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.weights import get_weights


def scenario_config(clients: int, per_round: int, rounds: int) -> SimulationPlan:
    """mnist1d (50 samples per client, 80 % train), Dirichlet(0.5) partitions, MLP 40-64-10,
    2 local epochs of batch 16 (FedAvg-style E/B), dense codec (:func:`bench_engine_paths.plan`)."""
    return plan(clients, per_round, rounds, ())


def pure_training_seconds(p: SimulationPlan) -> float:
    """Time of the local-training calls alone (same clients, seeds and weights as the engine run)."""
    cfg = p.cfg
    model = build_model(cfg.task)
    weights = get_weights(model)
    total = 0.0
    for rnd in range(1, cfg.rounds + 1):
        for pid in sample_clients(cfg.seed, rnd, cfg.num_clients, cfg.per_round):
            data = client_data(p.data, pid)
            t0 = time.perf_counter()
            local_update(model, weights, data, cfg.train, client_seed(cfg.seed, rnd, pid))
            total += time.perf_counter() - t0
    return total


def timed(engine: str, cfg: SimulationPlan) -> tuple[float, float]:
    """(wall seconds of the whole run, sum of per-round wall seconds)."""
    t0 = time.perf_counter()
    res = run_engine(engine, plan)
    return time.perf_counter() - t0, sum(r.wall_s for r in res.rounds)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="100 clients, 20 per round", out="engine_throughput.json")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="in-process repetitions (median)")
    args = ap.parse_args(argv)
    prov = Provenance.capture(argv, script=__file__)
    if args.quick:
        args.clients, args.per_round = 100, 20
    cfg = scenario_config(args.clients, args.per_round, args.rounds)
    updates = cfg.cfg.rounds * cfg.cfg.per_round
    client_data(cfg.data, 0)  # warm the dataset cache outside the timings
    run_engine("inprocess", cfg)  # warm-up: imports, allocator, first-call costs
    inproc = [timed("inprocess", cfg) for _ in range(args.repeats)]
    pure = statistics.median(pure_training_seconds(cfg) for _ in range(args.repeats))
    flower_wall, flower_rounds = timed("flower", cfg)
    in_wall = statistics.median(w for w, _ in inproc)
    result = {
        "scenario": {
            "clients": args.clients,
            "per_round": args.per_round,
            "rounds": args.rounds,
            "dataset": "mnist1d",
            "model": "mlp 40-64-10",
            "local_epochs": 2,
            "batch_size": 16,
        },
        "client_updates": updates,
        "clients_per_s_inprocess": updates / in_wall,
        "clients_per_s_flower": updates / flower_wall,
        "ratio": flower_wall / in_wall,
        "clients_per_s_flower_rounds_only": updates / flower_rounds,
        "ratio_rounds_only": flower_rounds / statistics.median(r for _, r in inproc),
        "overhead": in_wall / pure,
        "inprocess_wall_s": in_wall,
        "flower_wall_s": flower_wall,
        "pure_training_s": pure,
    }
    prov.write(out_path(args), result)
    print(f"| engine | client updates/s | wall s ({updates} updates) |")
    print("|---|---|---|")
    rate = result["clients_per_s_inprocess"]
    print(f"| inprocess (median of {args.repeats}) | {rate:.1f} | {in_wall:.2f} |")
    print(f"| flower (anchor, same run) | {result['clients_per_s_flower']:.1f} | {flower_wall:.2f} |")
    print(
        f"ratio inprocess/flower = {result['ratio']:.1f}x (goal >= 20x); "
        f"rounds only (no Ray start-up) = {result['ratio_rounds_only']:.1f}x"
    )
    print(f"inprocess overhead vs pure local training = {result['overhead']:.2f}x (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
