"""Client cost of each fine-tuning trainer on the real all-MiniLM-L6-v2: step time and peak memory.

For ``full``, ``lora``, ``fedsb`` and ``sparse`` (the configurations of ``bench_lora.py``: LoRA r = 8
on q, v; Fed-SB r = 78 on q, v; sparse density 0.003 with the dense head), at the benchmark's batch
16 and sequence length 32, one torch thread:

- **Client time per step**: a client round of ``--steps`` minibatches through ``local_update`` (the
  engines' function: weight snapshot, training, ``delta = local − global``; for ``sparse`` also its
  gradient-accumulation selection passes) divided by the number of optimizer steps; the median over
  ``--repeats`` rounds, each trainer in its own fresh process, the processes interleaved
  (full, lora, fedsb, sparse, full, ...) so that machine load hits all alike. The anchor is ``full``
  in the same run: read the ratios.
- **Peak RSS of a round**: the Linux high-water mark ``VmHWM`` is reset (``/proc/self/clear_refs``
  ``5``) after the model is built and loaded, and read after the round; the figure is ``VmHWM −
  VmRSS`` at the reset, i.e. the extra resident memory training needed. Load-independent.
- **Torch accounting** (exact, load-independent): bytes of the parameters, of the gradients the
  round leaves (``p.grad``), of Adam's state (two buffers the size of each optimized tensor), and of
  the activations autograd saves for backward in one training forward (``saved_tensors_hooks``,
  unique storages, parameters excluded).

Regenerate::

    .venv/bin/python benchmarks/bench_trainer_cost.py            # ~5 min on an idle machine
    .venv/bin/python benchmarks/bench_trainer_cost.py --quick    # 1 repeat, 4 steps

Prints a markdown table and writes ``benchmarks/results/trainer_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from _provenance import Provenance, out_path, parser
from bench_lora import RUNS, build  # same directory: the benchmark's model configurations
from torch import nn

from stamen.client.core import local_update
from stamen.client.state import ClientState
from stamen.client.trainers.sparse import _split, sparse_config
from stamen.simulations.text_data import load_pydocs
from stamen.task.data import TaskData
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

TRAINERS = ("full", "lora-exact", "fedsb", "sparse")
MB = 2**20


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the process's peak-RSS mark to the current RSS; return that RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one training forward."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def _trainable_for_step(model: nn.Module, run_name: str, spec: TrainSpec) -> list[nn.Parameter]:
    """Parameters that get gradients in the trainer's steps (sparse: not its skipped tensors)."""
    if run_name == "sparse":
        eligible, dense, _ = _split(model, sparse_config(spec))
        return [*eligible.values(), *dense]
    return [p for p in model.parameters() if p.requires_grad]


def probe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process: build ``name``'s model, account its memory, time ``--repeats`` rounds."""
    run = next(r for r in RUNS if r.name == name)
    ds = load_pydocs(args.seed, num_samples=args.num_samples, seq_len=args.seq_len)
    model, _ = build(run, args, ds)
    n = args.batch_size * args.steps
    data = TaskData(ds.x_train[:n], ds.y_train[:n], ds.num_classes, ds.x_train.shape[1])
    spec = TrainSpec(
        trainer=run.trainer,
        epochs=1,
        batch_size=args.batch_size,
        lr=run.lr,
        optimizer="adam",
        sparse_density=0.003,
    )
    weights = get_weights(model)
    stepped = _trainable_for_step(model, name, spec)
    skipped = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in stepped)]
    for p in skipped:
        p.requires_grad_(False)
    x, y = torch.from_numpy(ds.x_train[: args.batch_size]), torch.from_numpy(ds.y_train[: args.batch_size])
    activations = saved_activation_bytes(model, x, y)
    for p in skipped:
        p.requires_grad_(True)
    base = reset_peak()
    times = []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        local_update(model, weights, data, spec, rep, ClientState())
        times.append((time.perf_counter() - t0) / args.steps)
    peak = _status_kb("VmHWM")
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {
        "step_s": statistics.median(times),
        "step_s_all": times,
        "peak_rss_extra_mb": (peak - base) / 1024,
        "rss_before_mb": base / 1024,
        "param_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / MB,
        "optimized_params": sum(p.numel() for p in stepped),
        "grad_mb": grads / MB,
        "adam_state_mb": 2 * sum(p.numel() * p.element_size() for p in stepped) / MB,
        "activation_mb": activations / MB,
    }


def _cmd(name: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--probe",
        name,
        "--steps",
        str(args.steps),
        "--repeats",
        "1",
        "--seed",
        str(args.seed),
        "--num-samples",
        str(args.num_samples),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """``--repeats`` rounds of fresh processes, trainers interleaved; medians per trainer."""
    per: dict[str, list[dict[str, Any]]] = {t: [] for t in TRAINERS}
    for rep in range(args.repeats):
        for name in TRAINERS:
            out = subprocess.run(_cmd(name, args), capture_output=True, text=True, check=True)
            per[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"  repeat {rep + 1}/{args.repeats} {name:10s} step {per[name][-1]['step_s']:.3f} s "
                f"peak +{per[name][-1]['peak_rss_extra_mb']:.0f} MB",
                flush=True,
            )
    summary = {}
    for name, rows in per.items():
        summary[name] = {k: v for k, v in rows[0].items() if k not in ("step_s", "step_s_all")}
        summary[name]["step_s"] = statistics.median(r["step_s"] for r in rows)
        summary[name]["step_s_runs"] = [r["step_s"] for r in rows]
        summary[name]["peak_rss_extra_mb"] = statistics.median(r["peak_rss_extra_mb"] for r in rows)
    return summary


def table(summary: dict[str, Any]) -> str:
    """Markdown table with ratios against ``full`` from the same run."""
    full = summary["full"]
    lines = [
        "| trainer | optimized params | client s / step | × full | peak RSS +MB | × full | grads MB "
        "| Adam state MB | saved activations MB (batch 16) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary.items():
        lines.append(
            f"| {name} | {r['optimized_params']:,} | {r['step_s']:.3f} | {r['step_s'] / full['step_s']:.2f} "
            f"| {r['peak_rss_extra_mb']:.0f} | {r['peak_rss_extra_mb'] / full['peak_rss_extra_mb']:.2f} "
            f"| {r['grad_mb']:.1f} | {r['adam_state_mb']:.1f} | {r['activation_mb']:.1f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, quick="1 repeat of 4 steps", out="trainer_cost.json")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per timed round")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per trainer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1500)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = "minilm"
    if args.quick:
        args.steps, args.repeats = 4, 1
    if not 1 <= args.steps <= 100 or not 1 <= args.repeats <= 20:
        p.error("need 1 <= --steps <= 100 and 1 <= --repeats <= 20")
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe, args)))
        return
    prov = Provenance.capture(argv, script=__file__)
    summary = run_all(args)
    print(table(summary))
    out = {"config": vars(args), "trainers": summary, "loadavg_end": os.getloadavg()}
    prov.write(out_path(args), out)


if __name__ == "__main__":
    main()
