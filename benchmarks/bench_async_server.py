"""Server cost of asynchronous federation: updates per second the FedAsync / FedBuff loop sustains,
next to the synchronous round loop, on a ~1M-parameter model.

Both loops run the real server code (:func:`stamen.server.federation.assemble` and
:func:`~stamen.server.federation.assemble_async`: collection, verification, decoding, staleness
rule, aggregation, model history, records) over an *instant* transport whose clients reply at once
with a fixed dense update (1e-3-scaled Gaussian, per client). The clients' encoding of each reply
(it must name the task's base hash and version) is timed separately and subtracted, so the figure is
the server's own cost per update. No evaluation. Model: ``mlp`` 64-1024-896-10 on digits-shaped
input (993,930 float32 parameters, 3.98 MB per update).

Cases (``--updates`` updates each; median of ``--repeats`` runs, interleaved so machine load hits
all alike, one torch thread): sync FedAvg rounds of 10 clients (the anchor), FedBuff with a buffer
of 10 and 10 clients training at once, FedAsync with 10 clients at once (one model version per
update, so one history entry per update).

Regenerate::

    .venv/bin/python benchmarks/bench_async_server.py            # ~2 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_async_server.py --quick    # 40 updates, 1 repeat

Prints a markdown table and writes ``benchmarks/results/async_server[_quick].json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser

from stamen.protocols import CodecSpec, encode_update, keys
from stamen.server.config import ServerConfig
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.federation import RunExtras, assemble, assemble_async
from stamen.simulations.provider import DataSpec, initial_model
from stamen.simulations.scenario import load_scenario
from stamen.task.weights import Weights, get_weights

HIDDEN = "model.hidden=1024,896"
COHORT = 10
DENSE = CodecSpec.parse("dense")


class InstantClients:
    """Clients that answer every task at once with their fixed update; ``encode_s`` is the time
    spent encoding those replies (the clients' work, subtracted from the loop's time)."""

    def __init__(self, shape: Weights, n: int) -> None:
        rng = np.random.default_rng(0)

        def update() -> Weights:
            return {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in shape.items()}

        self.updates = {f"client-{i}": update() for i in range(n)}
        self.encode_s = 0.0
        self.pending: list[TrainTask] = []

    def clients(self) -> list[str]:
        return list(self.updates)

    def ready(self, client: str) -> bool:
        return all(t.client != client for t in self.pending)

    def now(self) -> float:
        return float("nan")

    def wait_ready(self, eligible: object = None) -> bool:
        return False

    def advance_to_window(self, eligible: object = None) -> bool:
        return False

    def reply(self, task: TrainTask) -> Reply:
        t0 = time.perf_counter()
        data = encode_update(
            self.updates[task.client], DENSE, base_hash=task.expected_base,
            version=task.instructions.version, sender=task.client, rng=np.random.default_rng(0),
        )  # fmt: skip
        self.encode_s += time.perf_counter() - t0
        return Reply(task.client, envelope=data, metrics={keys.NUM_EXAMPLES: 100}, nbytes=len(data))

    def train(self, tasks: Sequence[TrainTask], timeout: float) -> list[Reply]:
        return [self.reply(t) for t in tasks]

    def push(self, task: TrainTask) -> None:
        self.pending.append(task)

    def pull(self, timeout: float) -> list[Reply]:
        return [self.reply(self.pending.pop(0))] if self.pending else []


def _config(mode: str, updates: int) -> ServerConfig:
    versions = {"sync": updates // COHORT, "fedbuff": updates // COHORT, "fedasync": updates}[mode]
    s = load_scenario(
        "smoke",
        [HIDDEN, f"rounds={versions}", f"data.num_clients={COHORT}", f"clients.per_round={COHORT}",
         f"server.mode={mode}", f"server.buffer_size={COHORT}", f"eval.every={versions + 1}",
         "aggregation.norm_ratio=0"],
    )  # fmt: skip
    return ServerConfig.from_settings(s, 600.0)


def run_case(mode: str, updates: int) -> dict[str, Any]:
    """One run: the server's seconds (loop minus the clients' encoding) and updates per second."""
    cfg = _config(mode, updates)
    initial = get_weights(initial_model(cfg.task, DataSpec(dataset="digits", num_clients=COHORT)))
    clients = InstantClients(initial, COHORT)
    if mode == "sync":
        driver: Any = assemble(cfg, clients, initial, None, RunExtras())
    else:
        driver = assemble_async(cfg, clients, initial, None, RunExtras())
    t0 = time.perf_counter()
    result = driver.run(initial)
    loop_s = time.perf_counter() - t0
    server_s = loop_s - clients.encode_s
    used = sum(r.rejected == 0 for r in result.rounds)
    return {
        "mode": mode, "updates": updates, "versions": len(result.rounds), "loop_s": loop_s,
        "encode_s": clients.encode_s, "server_s": server_s, "updates_per_s": updates / server_s,
        "rejected": sum(r.rejected for r in result.rounds), "clean_versions": used,
        "params": int(sum(v.size for v in initial.values())),
    }  # fmt: skip


def main() -> None:
    p = parser(__doc__, quick="40 updates, 1 repeat", out="async_server.json")
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.updates, args.repeats = 40, 1
    torch.set_num_threads(1)
    prov = Provenance.capture()
    modes = ("sync", "fedbuff", "fedasync")
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for mode in modes:
            runs.append({**run_case(mode, args.updates), "repeat": rep})
            print(f"  {mode:8s} rep {rep}: {runs[-1]['updates_per_s']:.1f} updates/s", flush=True)
    summary = {m: statistics.median(r["updates_per_s"] for r in runs if r["mode"] == m) for m in modes}
    print(f"\n| loop | updates/s (median of {args.repeats}) | / sync |\n|---|---|---|")
    for m in modes:
        print(f"| {m} | {summary[m]:.1f} | {summary[m] / summary['sync']:.2f} |")
    setting = {
        "params": runs[0]["params"],
        "cohort": COHORT,
        "updates": args.updates,
        "repeats": args.repeats,
    }
    prov.write(out_path(args), {"setting": setting, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
