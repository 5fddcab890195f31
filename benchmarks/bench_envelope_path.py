"""Per-client envelope path: microseconds to release (client: codec + envelope) and to accept (server:
verify, decode, validate, stack) one update, on the engine benchmark's scenario (issue #15).

Scenario: mnist1d, 1000 clients (Dirichlet 0.5), 100 per round, MLP 40-64-10 (d = 3,274 float32),
dense codec, FedAvg: the round's cohort is trained once (cohort-batched, real deltas), then each
repeat releases every row with the engine's own :func:`~stamen.simulations.engines.rows.release_row`
(what the in-process engine runs after training) and accepts every reply with the driver's own
:class:`~stamen.server.driver.collect.UpdateCollector` and the run's collect policy. Reported: the
median over ``--repeats`` of the per-client microseconds of each half, next to the issue's budget
(5,000 updates/s = 200 us per update in all, of which the training kernel needs about 60 us).

    .venv/bin/python benchmarks/bench_envelope_path.py            # 100-client cohort, 15 repeats
    .venv/bin/python benchmarks/bench_envelope_path.py --quick    # 20-client cohort, 5 repeats
    .venv/bin/python benchmarks/bench_envelope_path.py --before OLD.json --before-label f24296c
        # + the figures of a run of this script on older code (an exported tree), side by side

Writes benchmarks/results/envelope_path.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser
from bench_engine_paths import plan

from stamen.client.state import ClientState
from stamen.protocols import model_hash
from stamen.server.driver.collect import UpdateCollector
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.engines.rows import RowJob, TrainedRow, release_row, train_rows
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.plan import SimulationPlan
from stamen.task.models import model_structure

BUDGET_US = 200.0  # 5,000 updates/s on the 2 cores, everything included
KERNEL_US = 60.0  # what the cohort training kernel needs of it (the lead's estimate)


class _NoTransport:
    """The driver is built only for its collect policy; nothing is sent."""

    def clients(self) -> list[str]:
        return []


def cohort(p: SimulationPlan, nodes: SimulatedNodes) -> tuple[list[TrainTask], np.ndarray, list[TrainedRow]]:
    """Round 1's tasks, its cohort trained into a ``(n, d)`` stack, and the trained rows."""
    weights = p.initial
    instr, digest = p.cfg.instructions(1, 1), model_hash(weights)
    tasks = [TrainTask(f"client-{pid}", instr, weights, None, digest) for pid in p.cohort(1)]
    jobs = [RowJob(i, int(t.client.rpartition("-")[2]), t) for i, t in enumerate(tasks)]
    stack = np.empty((len(tasks), sum(int(v.size) for v in weights.values())), dtype=np.float32)
    done: list[TrainedRow] = []
    model = model_structure(p.cfg.task)
    train_rows(jobs, model, nodes, stack, True, torch.device("cpu"), done.extend)
    done.sort(key=lambda r: r.index)
    return tasks, stack, done


def one_repeat(p: SimulationPlan, nodes: SimulatedNodes, policy: Any, cohort_: Any) -> tuple[float, float]:
    """Seconds to release every row, and to accept every reply (all accepted, else an error)."""
    tasks, stack, rows = cohort_
    states = [ClientState() for _ in tasks]
    t0 = time.perf_counter()
    replies: list[Reply] = [
        release_row(nodes, t, stack[r.index], r, s) for t, r, s in zip(tasks, rows, states, strict=True)
    ]
    t1 = time.perf_counter()
    collector = UpdateCollector(p.initial, tasks, policy)
    for reply in replies:
        collector.add(reply)
    t2 = time.perf_counter()
    if collector.stats.accepted != len(tasks):
        raise RuntimeError(f"rejected updates: {collector.stats.reasons[:3]}")
    return t1 - t0, t2 - t1


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="20-client cohort, 5 repeats", out="envelope_path.json")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=15, help="repetitions (median)")
    ap.add_argument("--before", type=Path, default=None, help="results JSON of the code before, to compare")
    ap.add_argument("--before-label", default="", help="what --before measured (e.g. its commit)")
    args = ap.parse_args(argv)
    prov = Provenance.capture(argv, script=__file__)
    if args.quick:
        args.clients, args.per_round, args.repeats = 100, 20, 5
    torch.set_num_threads(1)
    p = plan(args.clients, args.per_round, 1, ("engine.batching=on", "engine.workers=1"))
    nodes = p.nodes(None)
    policy = p.driver(_NoTransport(), None).policy  # type: ignore[arg-type]
    made = cohort(p, nodes)
    one_repeat(p, nodes, policy, made)  # warm caches and imports
    runs = [one_repeat(p, nodes, policy, made) for _ in range(args.repeats)]
    n = len(made[0])
    us = {
        "release": statistics.median(r[0] for r in runs) / n * 1e6,
        "accept": statistics.median(r[1] for r in runs) / n * 1e6,
        "release_plus_accept": statistics.median(r[0] + r[1] for r in runs) / n * 1e6,
    }
    before = json.loads(args.before.read_text())["per_client_us"] if args.before is not None else None
    result = {
        "scenario": {"clients": args.clients, "per_round": args.per_round, "d": int(made[1].shape[1])},
        "repeats": args.repeats,
        "per_client_us": us,
        "before_per_client_us": before,
        "before": {"file": str(args.before or ""), "label": args.before_label},
        "budget_us": {"per_update": BUDGET_US, "kernel": KERNEL_US, "envelope_path": BUDGET_US - KERNEL_US},
        "bytes_per_update": int(np.median([len(r.envelope or b"") for r in _replies(nodes, made)])),
    }
    prov.write(out_path(args), {**result, "machine": "2 cores, loaded by other jobs"})
    print(f"cohort {n} clients, d = {made[1].shape[1]}, median of {args.repeats} repeats")
    report(us, before)
    return 0


def report(us: dict[str, float], before: dict[str, float] | None) -> None:
    """The per-client table, with the before figures and ratios when given, and the budget."""
    rows = {
        "release": "release (client: codec + envelope)",
        "accept": "accept (server: verify, decode, validate, stack)",
        "release_plus_accept": "release + accept",
    }
    print("| half | us per client | before | x faster |")
    print("|---|---|---|---|")
    for key, label in rows.items():
        old = f"{before[key]:.0f} | {before[key] / us[key]:.2f}" if before is not None else "- | -"
        print(f"| {label} | {us[key]:.0f} | {old} |")
    left = BUDGET_US - KERNEL_US
    print(f"budget: {BUDGET_US:.0f} us per update (5,000/s), the kernel's ~{KERNEL_US:.0f}: {left:.0f} left")


def _replies(nodes: SimulatedNodes, made: Any) -> list[Reply]:
    tasks, stack, rows = made
    return [release_row(nodes, t, stack[r.index], r, ClientState()) for t, r in zip(tasks, rows, strict=True)]


if __name__ == "__main__":
    sys.exit(main())
