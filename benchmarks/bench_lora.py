"""LoRA / Fed-SB / sparse fine-tuning of the real all-MiniLM-L6-v2 on ``pydocs``, federated and non-iid.

For each trainer — ``full`` (anchor), ``lora`` with ``lora_naive`` and with ``lora_exact``
aggregation, ``fedsb``, ``sparse`` — run the same federation (pydocs, 10 clients, Dirichlet α = 0.5,
``--per-round`` clients a round, real packed envelopes) and report the final and best test accuracy,
the measured upload bytes per client per round (``len()`` of the envelope), their ratio to ``full``
in the same run, the accuracy difference to ``full``, the naive-vs-exact gap
``||Σ w_i B_i A_i − B̄ Ā|| / ||Σ w_i B_i A_i − B A||`` per round, the client step time and the peak
memory of a client process (``ru_maxrss`` increase over the loaded model, measured in a fresh
subprocess per trainer). Centralized full fine-tuning on the pooled training set for the same number
of epochs is the ceiling.

Until the scenario keys ``[lora]``/``sparse_*`` and the ``pydocs`` data set are wired into
``load_scenario`` -> ``ServerConfig.from_scenario`` -> ``run_engine``, the federation is a minimal
loop over the *same* functions the ``inprocess`` engine calls: ``sample_clients``, ``client_seed``,
``local_update``, ``encode_delta`` (packed envelopes), ``RoundAggregator`` (decode, validate,
``bind_round``, aggregate), ``evaluate_model``.

Regenerate::

    .venv/bin/python benchmarks/bench_lora.py            # default run (~10 min on an idle core)
    .venv/bin/python benchmarks/bench_lora.py --quick    # minutes: fewer rounds and samples

Prints a markdown table and writes ``benchmarks/results/lora.json`` (``lora-quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stamen.client import minilm as _minilm  # noqa: F401  (registers minilm, minilm-tiny)
from stamen.client.core import client_seed, encode_delta, local_update
from stamen.client.lora import adapter_config, attach_adapters
from stamen.client.models import create_model, evaluate_model, get_weights, set_weights
from stamen.client.state import ClientState
from stamen.client.task import TaskData, TaskSpec, TrainSpec
from stamen.client.trainers.full import run_epochs
from stamen.protocols import model_hash
from stamen.server.aggregators import create
from stamen.server.rounds import RoundAggregator, ValidationPolicy
from stamen.server.sampling import sample_clients
from stamen.simulations.partition import partition
from stamen.simulations.text_data import load_pydocs

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Run:
    """One federated configuration."""

    name: str
    trainer: str
    rule: str
    codec: str
    lr: float
    task: dict[str, Any] = field(default_factory=dict)


RUNS = (
    Run("full", "full", "fedavg", "dense", 1e-4),
    Run(
        "lora-naive",
        "lora",
        "lora_naive",
        "lora",
        1e-3,
        {"adapter": "lora", "lora_rank": 8, "lora_alpha": 16.0},
    ),
    Run(
        "lora-exact",
        "lora",
        "lora_exact",
        "lora",
        1e-3,
        {"adapter": "lora", "lora_rank": 8, "lora_alpha": 16.0},
    ),
    Run("fedsb", "fedsb", "fedavg", "lora", 1e-3, {"adapter": "fedsb", "lora_rank": 48, "lora_alpha": 48.0}),
    Run("sparse", "sparse", "fedavg", "lora", 2e-4),
)


def build(run: Run, args: argparse.Namespace, ds: Any) -> tuple[torch.nn.Module, TaskSpec]:
    """The run's model: pretrained MiniLM + head, adapters attached as ``build_model`` would."""
    task = TaskSpec(dataset="pydocs", model=args.model, seed=args.seed, **run.task)
    model = create_model(args.model, ds.x_train.shape[1], ds.num_classes, (), seed=args.seed)
    return attach_adapters(model, adapter_config(task), seed=args.seed, sample=(ds.x_train, ds.y_train)), task


@dataclass
class _Timing:
    """Local-training time and optimizer steps over a run (for the per-step time)."""

    seconds: float = 0.0
    steps: int = 0


def _client(
    run: Run, args: argparse.Namespace, ctx: tuple[torch.nn.Module, TrainSpec, Any, np.ndarray],
    weights: dict[str, np.ndarray], rnd: int, pid: int, state: ClientState, ra: RoundAggregator,
    timing: _Timing,
) -> int:
    """One client: train (timed), encode a real envelope, hand it to the round; returns its bytes."""
    model, spec, ds, idx = ctx
    seed = client_seed(args.seed, rnd, pid)
    data = TaskData(ds.x_train[idx], ds.y_train[idx], ds.num_classes, ds.x_train.shape[1])
    t0 = time.perf_counter()
    result = local_update(model, weights, data, spec, seed, state)
    timing.seconds += time.perf_counter() - t0
    timing.steps += args.epochs * math.ceil(len(data.y) / args.batch_size)
    payload = encode_delta(result.delta, run.codec, base_hash=ra.base_hash, version=rnd,
                           sender=f"client-{pid}", seed=seed ^ 0xC0DEC)
    ra.add_envelope(f"client-{pid}", payload, result.num_examples)
    return len(payload)


def _summary(run: Run, rounds: list[dict[str, Any]], timing: _Timing) -> dict[str, Any]:
    accs = [r["accuracy"] for r in rounds if not math.isnan(r["accuracy"])]
    return {
        "name": run.name, "trainer": run.trainer, "rule": run.rule, "codec": run.codec, "lr": run.lr,
        "task": run.task, "final_accuracy": accs[-1], "best_accuracy": max(accs), "rounds": rounds,
        "bytes_up_per_client": statistics.median(r["bytes_up_per_client"] for r in rounds),
        "step_s": timing.seconds / max(timing.steps, 1),
    }


def federate(run: Run, args: argparse.Namespace, ds: Any, parts: list[np.ndarray]) -> dict[str, Any]:
    """``args.rounds`` rounds of the run; per-round accuracy, bytes, gap and client timings."""
    model, _ = build(run, args, ds)
    spec = TrainSpec(trainer=run.trainer, epochs=args.epochs, batch_size=args.batch_size, lr=run.lr,
                     optimizer="adam", sparse_density=0.003)
    weights, agg = get_weights(model), create(run.rule)
    states = {pid: ClientState() for pid in range(len(parts))}
    rounds: list[dict[str, Any]] = []
    timing = _Timing()
    for rnd in range(1, args.rounds + 1):
        pids = sample_clients(args.seed, rnd, len(parts), args.per_round)
        ra = RoundAggregator(weights, model_hash(weights), len(pids), agg, ValidationPolicy())
        sizes = [_client(run, args, (model, spec, ds, parts[pid]), weights, rnd, pid, states[pid], ra,
                         timing) for pid in pids]
        new = ra.finish(1.0)
        assert new is not None and ra.stats.rejected == 0, ra.stats.reasons
        weights = new
        acc = math.nan
        if rnd % args.eval_every == 0 or rnd == args.rounds:
            set_weights(model, weights)
            acc = evaluate_model(model, ds.x_test, ds.y_test, 256)[1]
        gap = getattr(agg, "last_gap", math.nan)
        rounds.append({"round": rnd, "accuracy": acc, "bytes_up_per_client": statistics.median(sizes),
                       "gap": gap})
        print(f"  {run.name:10s} round {rnd:2d} acc {acc:.4f} up {statistics.median(sizes):>10,.0f} B "
              f"gap {gap:.3g}", flush=True)
    return _summary(run, rounds, timing)


def centralized(args: argparse.Namespace, ds: Any) -> dict[str, Any]:
    """Full fine-tuning on the pooled training set, ``args.central_epochs`` epochs (the ceiling)."""
    model = create_model(args.model, ds.x_train.shape[1], ds.num_classes, (), seed=args.seed)
    spec = TrainSpec(epochs=1, batch_size=args.batch_size, lr=1e-4, optimizer="adam")
    data = TaskData(ds.x_train, ds.y_train, ds.num_classes, ds.x_train.shape[1])
    accs = []
    for epoch in range(args.central_epochs):
        run_epochs(model, data, spec, seed=args.seed + epoch)
        accs.append(evaluate_model(model, ds.x_test, ds.y_test, 256)[1])
        print(f"  centralized epoch {epoch + 1} acc {accs[-1]:.4f}", flush=True)
    return {"final_accuracy": accs[-1], "best_accuracy": max(accs), "epochs": args.central_epochs}


def probe(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak-RSS increase and step time of one client round of ``name`` (run in this fresh process)."""
    run = next(r for r in RUNS if r.name == name)
    ds = load_pydocs(args.seed, num_samples=args.num_samples, seq_len=args.seq_len)
    model, _ = build(run, args, ds)
    weights = get_weights(model)
    n = args.batch_size * 8
    data = TaskData(ds.x_train[:n], ds.y_train[:n], ds.num_classes, ds.x_train.shape[1])
    spec = TrainSpec(trainer=run.trainer, epochs=1, batch_size=args.batch_size, lr=run.lr, optimizer="adam",
                     sparse_density=0.003)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    local_update(model, weights, data, spec, 1, ClientState())
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_increase_mb": (peak - before) / 1024, "peak_rss_mb": peak / 1024, "step_s": elapsed / 8}


def probe_all(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run :func:`probe` for every trainer in its own subprocess (ru_maxrss is a process high-water mark)."""
    out = {}
    for run in RUNS:
        if run.name == "lora-naive":
            continue  # same client as lora-exact
        cmd = [
            sys.executable,
            __file__,
            "--probe",
            run.name,
            "--threads",
            str(args.threads),
            "--model",
            args.model,
            "--num-samples",
            str(args.num_samples),
            "--seq-len",
            str(args.seq_len),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[run.name] = json.loads(res.stdout.strip().splitlines()[-1])
    out["lora-naive"] = out["lora-exact"]
    return out


def table(runs: list[dict[str, Any]], central: dict[str, Any], probes: dict[str, dict[str, float]]) -> str:
    """Markdown table of the results, ratios against ``full`` from the same run."""
    if not runs:  # --only central
        return f"centralized: final {central['final_accuracy']:.4f}, best {central['best_accuracy']:.4f}"
    full = next((r for r in runs if r["name"] == "full"), runs[0])  # the anchor (full unless --only)
    lines = [
        "| trainer / aggregation | final acc | best acc | Δacc vs full (pts) | bytes up / client / round "
        "| × fewer than full | step s | peak RSS +MB | naive-exact gap (last round) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        gap = r["rounds"][-1]["gap"]
        lines.append(
            f"| {r['name']} ({r['rule']}, codec {r['codec']}) | {r['final_accuracy']:.4f} "
            f"| {r['best_accuracy']:.4f} | {100 * (r['final_accuracy'] - full['final_accuracy']):+.1f} "
            f"| {r['bytes_up_per_client']:,.0f} "
            f"| {full['bytes_up_per_client'] / r['bytes_up_per_client']:.1f} | {r['step_s']:.3f} "
            f"| {probes.get(r['name'], {}).get('peak_rss_increase_mb', math.nan):.0f} "
            f"| {'' if math.isnan(gap) else f'{gap:.3f}'} |"
        )
    lines.append(
        f"| centralized full fine-tuning ({central['epochs']} epochs, ceiling) "
        f"| {central['final_accuracy']:.4f} | {central['best_accuracy']:.4f} | | | | | | |"
    )
    return "\n".join(lines)


def combine(args: argparse.Namespace, path: Path) -> None:
    """Merge runs (``--only`` partial files or finished files) into one table and result file."""
    runs: dict[str, Any] = {}
    out: dict[str, Any] = {"centralized": None, "probes": {}}
    for name in args.combine:
        data = json.loads(Path(name).read_text())
        for r in data if isinstance(data, list) else data["runs"]:
            runs[r["name"]] = r
        if isinstance(data, dict):
            out["probes"].update(data["probes"])
            if data["centralized"]["epochs"]:
                out["centralized"] = data["centralized"]
            out["config"] = data["config"]
    order = [r.name for r in RUNS if r.name in runs]
    out["runs"] = [runs[n] for n in order]
    print(table(out["runs"], out["centralized"], out["probes"]))
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks the run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="minutes-long run: fewer rounds and samples")
    p.add_argument("--model", default="minilm", choices=["minilm", "minilm-tiny"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=1500)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--central-epochs", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the engines use 1)")
    p.add_argument("--only", default="", help="comma-separated run names, or 'central' (default: all)")
    p.add_argument("--tag", default="", help="suffix of the output files (parallel partial runs)")
    p.add_argument("--skip-central", action="store_true", help="no centralized ceiling run")
    p.add_argument("--skip-probes", action="store_true", help="no memory/step-time probes")
    p.add_argument("--combine", nargs="*", default=None, help="merge the runs of these result files")
    p.add_argument("--probe", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.num_samples, args.central_epochs, args.eval_every = 2, 1000, 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every configuration, print the table, write the JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe, args)))
        return
    t0 = time.perf_counter()
    ds = load_pydocs(args.seed, num_samples=args.num_samples, seq_len=args.seq_len)
    parts = partition(ds.y_train, args.num_clients, "dirichlet", seed=args.seed, alpha=args.alpha)
    wanted = [r for r in RUNS if not args.only or r.name in args.only.split(",")]
    path = RESULTS / f"lora{'-quick' if args.quick else ''}{'-' + args.tag if args.tag else ''}.json"
    RESULTS.mkdir(exist_ok=True)
    if args.combine is not None:
        combine(args, path)
        return
    runs = []
    for r in wanted:
        runs.append(federate(r, args, ds, parts))
        path.with_suffix(".partial.json").write_text(json.dumps(runs, indent=1, default=float))
    central = {"final_accuracy": math.nan, "best_accuracy": math.nan, "epochs": 0}
    if not args.skip_central:
        central = centralized(args, ds)
    probes = {} if args.skip_probes else probe_all(args)
    print(table(runs, central, probes))
    out = {
        "config": vars(args),
        "train_size": len(ds.y_train),
        "test_size": len(ds.y_test),
        "client_sizes": [len(p) for p in parts],
        "runs": runs,
        "centralized": central,
        "probes": probes,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "wall_s": time.perf_counter() - t0,
    }
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
