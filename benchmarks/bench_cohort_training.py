"""Cohort-batched local training vs the per-client loop: client updates per second, same clients.

Workload: the engine benchmark's (bench_engine_throughput.py) -- mnist1d, 50 samples per client
(40 train on average), Dirichlet(0.5) partitions of 1000 clients, MLP 40-64-10, 2 local epochs of
batch 16, plain SGD. A cohort of ``c`` clients takes ids ``0..c-1``: client ``pid`` trains on
partition ``pid % 1000`` with its own round seed ``client_seed(0, 1, pid)``, so cohorts past 1000
repeat data, never work. Anchor, measured in the same run: the per-client loop
(``stamen.client.core.local_update``, one torch thread, as the in-process engine runs it) over the
cohort's first ``--loop-clients`` clients. The cohort timing covers seeds, index rows, the host to
device copy, training and the deltas written into a preallocated ``(c, d)`` float32 stack. The
first clients' deltas are compared with the loop's (max abs difference printed).

    .venv/bin/python benchmarks/bench_cohort_training.py                     # CPU: 100, 1000, 10000
    python3 benchmarks/bench_cohort_training.py --device cuda --cohorts 10000 100000 --stack device --out cuda

Writes benchmarks/results/cohort_training[_OUT].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance

from stamen.client.core import local_update
from stamen.simulations.cohort import CohortData, client_seeds, train_cohort
from stamen.simulations.data import load_dataset
from stamen.simulations.partition import Partitioning, build_partitioning
from stamen.simulations.provider import DataSpec
from stamen.task.data import TaskData
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.spec import TaskSpec, TrainSpec
from stamen.task.weights import get_weights

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 1000
DATA = DataSpec(
    dataset="mnist1d",
    num_samples=50 * PARTITIONS,
    partition="dirichlet",
    alpha=0.5,
    num_clients=PARTITIONS,
    seed=0,
)
TASK = TaskSpec(model="mlp", input_dim=40, num_classes=10, hidden=(64,), seed=0)
SPEC = TrainSpec(epochs=2, batch_size=16)


@dataclass
class Workload:
    """The pool, its partitions, the model and the global weights (built once)."""

    x: np.ndarray
    y: np.ndarray
    parts: Partitioning
    model: torch.nn.Module
    weights: dict[str, np.ndarray]

    def client(self, pid: int) -> TaskData:
        idx = self.parts.indices(pid % PARTITIONS)
        return TaskData(self.x[idx], self.y[idx], 10, self.x.shape[1])


def workload() -> Workload:
    ds = load_dataset("mnist1d", seed=DATA.seed, num_samples=DATA.num_samples)
    parts = build_partitioning(ds.y_train, PARTITIONS, "dirichlet", seed=DATA.seed, alpha=DATA.alpha)
    model = build_model(TASK)
    return Workload(ds.x_train, ds.y_train, parts, model, get_weights(model))


def loop_rate(w: Workload, clients: int) -> tuple[float, np.ndarray]:
    """Per-client loop over pids ``0..clients-1``: (updates/s, their deltas (clients, d))."""
    torch.set_num_threads(1)
    for pid in range(3):  # warm-up: first-call costs are not the loop's rate
        local_update(w.model, w.weights, w.client(pid), SPEC, client_seed(TASK.seed, 1, pid))
    deltas = []
    t0 = time.perf_counter()
    for pid in range(clients):
        res = local_update(w.model, w.weights, w.client(pid), SPEC, client_seed(TASK.seed, 1, pid))
        deltas.append(np.concatenate([res.delta[n].ravel() for n in w.weights]))
    return clients / (time.perf_counter() - t0), np.stack(deltas)


def cohort_seconds(
    w: Workload, cohort: int, device: torch.device, out: np.ndarray | torch.Tensor
) -> tuple[float, float]:
    """One cohort-batched pass over pids ``0..cohort-1`` (deltas into ``out``): wall seconds of
    (seeds + index rows + copy to the device, training + deltas into ``out``)."""
    t0 = time.perf_counter()
    pids = np.arange(cohort)
    seeds = client_seeds(TASK.seed, 1, pids)
    rows, sizes = w.parts.rows(pids % PARTITIONS)
    data = CohortData.from_padded(w.x, w.y, rows, sizes, device)
    t1 = time.perf_counter()
    train_cohort(w.model, w.weights, data, SPEC, seeds, out=out)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return t1 - t0, time.perf_counter() - t1


def measure(w: Workload, cohort: int, device: torch.device, threads: int, args: argparse.Namespace) -> dict:
    """Median cohort updates/s over ``args.repeats`` passes (after a warm-up pass on 256 clients)."""
    torch.set_num_threads(threads)
    d = sum(v.size for v in w.weights.values())
    if args.stack == "device":
        out: np.ndarray | torch.Tensor = torch.empty((cohort, d), dtype=torch.float32, device=device)
    else:
        out = np.empty((cohort, d), dtype=np.float32)
    cohort_seconds(w, min(cohort, 256), device, out[: min(cohort, 256)])
    runs = [cohort_seconds(w, cohort, device, out) for _ in range(args.repeats)]
    total = statistics.median(p + t for p, t in runs)
    return {"updates_per_s": cohort / total, "prep_share": statistics.median(p / (p + t) for p, t in runs)}


def agreement(w: Workload, device: torch.device, loop_deltas: np.ndarray) -> float:
    """Max |cohort - loop| over the loop's clients, trained as one cohort on ``device``."""
    out = np.empty_like(loop_deltas)
    cohort_seconds(w, len(loop_deltas), device, out)
    return float(np.abs(out - loop_deltas).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads for the cohort")
    ap.add_argument("--loop-clients", type=int, default=100, help="clients the loop anchor trains per row")
    ap.add_argument("--repeats", type=int, default=3, help="cohort passes per size (median)")
    ap.add_argument("--stack", choices=["host", "device"], default="host", help="where the (c, d) deltas go")
    ap.add_argument(
        "--out",
        default="",
        help="suffix of the results file (cohort_training_OUT.json), or a path ending in .json",
    )
    args = ap.parse_args(argv)
    device, prov = torch.device(args.device), provenance()
    w = workload()
    rows, diff = [], 0.0
    for cohort in args.cohorts:  # the anchor is re-measured next to every row: the load drifts
        loop, loop_deltas = loop_rate(w, min(cohort, args.loop_clients))
        diff = max(diff, agreement(w, device, loop_deltas))
        rates = {str(t): measure(w, cohort, device, t, args) for t in args.threads}
        rows.append({"cohort": cohort, "loop_updates_per_s": loop, "cohort_updates_per_s": rates})
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{prov['machine']['cpus']} CPU cores"
    )
    result = {
        "workload": "mnist1d dirichlet(0.5) 1000 partitions, 40 train samples/client (mean), "
        "MLP 40-64-10, 2 epochs, batch 16, SGD lr 0.05",
        "device": name,
        "stack": args.stack,
        "loop_clients": args.loop_clients,
        "max_abs_diff_vs_loop": diff,
        "rows": rows,
        "provenance": prov,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"cohort_training{'_' + args.out if args.out else ''}.json"
    if args.out.endswith(".json"):
        path = Path(args.out)
    path.write_text(json.dumps(result, indent=2) + "\n")
    _print(result, args.threads)
    return 0


def _print(result: dict, threads: list[int]) -> None:
    load = result["provenance"]["machine"]["load_average_1min"]
    print(f"device: {result['device']}; 1-min load average at start {load:.1f}")
    print(f"max |cohort - loop| over the loop's clients: {result['max_abs_diff_vs_loop']:.2e}")
    print(f"deltas stacked on the {result['stack']}; prep = seeds + index rows + copy to the device")
    heads = " | ".join(f"cohort ({t} thr) /s | x loop | prep share" for t in threads)
    print(f"| cohort | loop (anchor, 1 thr) /s | {heads} |")
    print("|---" * (2 + 3 * len(threads)) + "|")
    for row in result["rows"]:
        loop = row["loop_updates_per_s"]
        cells = " | ".join(
            f"{r['updates_per_s']:.0f} | {r['updates_per_s'] / loop:.1f} | {r['prep_share']:.0%}"
            for r in (row["cohort_updates_per_s"][str(t)] for t in threads)
        )
        print(f"| {row['cohort']} | {loop:.0f} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
