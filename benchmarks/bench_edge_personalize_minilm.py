"""Sparse-backprop personalization on the real all-MiniLM-L6-v2: training memory and step time per
plan vs full backprop, and personalized accuracy on non-iid clients vs the global model.

Setup: ``pydocs`` (offline docstring classification, 10 labels, ``--samples`` texts, 64 tokens)
pooled and split over 8 clients with Dirichlet(α=0.3) label skew; each target client's samples
are halved into local train / local test. The global model is MiniLM (genuine weights, frozen)
with a linear head trained on the mean-pooled embeddings of the *other* clients' data (full-batch
Adam, 300 steps) — a stand-in for a federated model that never saw the target client. The target
client then personalizes that global model with each plan (SGD without momentum, batch 16,
``--epochs`` epochs, dropout off; step size chosen by the device itself from ``LRS`` on a 25 %
hold-out of its train half) and is scored on its own local test half. Anchor: ``full`` (stock
autograd on all 22.7 M parameters) in the same run.

Training memory = bytes autograd keeps for backward, counted tensor by tensor with
``torch.autograd.graph.saved_tensors_hooks`` during a real training step (by storage; resident
weights excluded) + gradients + optimizer state (none for plain SGD). It is a measurement of what
the step keeps, not a model; transient backward workspace and RSS are not included, nor are the
weights every plan holds (≈ 90 MB): device-level peaks, weights included, are measured by
``bench_edge_personalize_device.py``. Step time is the median over all training steps of the
final run (forward + backward + SGD step).

    .venv/bin/python benchmarks/bench_edge_personalize_minilm.py [--clients 2] [--quick]

Writes ``benchmarks/results/edge_personalize_minilm.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stamen.edge.personalization import PersonalizeConfig, resolve_plan, train_plan
from stamen.edge.plans import PlanSpec, parse_plan
from stamen.simulations.partition import partition
from stamen.simulations.text_data import load_pydocs
from stamen.task.models import create_model
from stamen.task.models.minilm import TextClassifier

RESULTS = Path(__file__).resolve().parent / "results" / "edge_personalize_minilm.json"
PLANS = ["full", "bias", "last_k=1", "last_k=2", "channels=0.25", "budget=FULL/8", "budget=FULL/20"]
SEQ, BATCH, CLIENTS = 64, 16, 8
LRS = (0.001, 0.003, 0.01, 0.03, 0.1)  # full fine-tuning of 22M weights needs the small end
QUICK_LR = 0.03


def _model(head: dict[str, torch.Tensor]) -> TextClassifier:
    model = create_model("minilm", SEQ, 10, [], seed=0)
    assert isinstance(model, TextClassifier)
    model.classifier.load_state_dict(head)
    return model.eval()


@torch.no_grad()
def _embed(encoder: nn.Module, x: np.ndarray) -> torch.Tensor:
    out = [encoder(torch.from_numpy(x[i : i + 64])) for i in range(0, len(x), 64)]
    return torch.cat(out)


def _train_head(emb: torch.Tensor, y: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    head = nn.Linear(emb.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    yt = torch.from_numpy(y)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(emb), yt).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


@torch.no_grad()
def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    pred = torch.cat([model(torch.from_numpy(x[i : i + 64])).argmax(1) for i in range(0, len(x), 64)])
    return float((pred.numpy() == y).mean())


def _pick_lr(head: dict, spec: PlanSpec, x: np.ndarray, y: np.ndarray, cfg: PersonalizeConfig) -> float:
    """The device's own choice of step size: best of LRS on a 25 % hold-out of its train half."""
    cut = max(1, len(y) // 4)
    scores = []
    for lr in LRS:
        model, run_cfg = _model(head), replace(cfg, lr=lr)
        train_plan(model, x[cut:], y[cut:], resolve_plan(spec, model, x[cut:], y[cut:], run_cfg), run_cfg)
        scores.append((_accuracy(model, x[:cut], y[:cut]), -lr))
    return -max(scores)[1]  # ties -> the smaller step


def _spec(plan: str, full_mem: int | None) -> PlanSpec:
    if plan.startswith("budget=FULL/"):
        assert full_mem is not None
        return PlanSpec("budget", full_mem // int(plan.split("/")[1]))
    return parse_plan(plan)


def _client_rows(head: dict, data: tuple, cfg: PersonalizeConfig, per_plan: dict, tune: bool) -> None:
    xtr, ytr, xte, yte = data
    full_mem = None
    for plan in PLANS:
        t0 = time.perf_counter()
        spec = _spec(plan, full_mem)
        lr = _pick_lr(head, spec, xtr, ytr, cfg) if tune else cfg.lr
        model, run_cfg = _model(head), replace(cfg, lr=lr)
        resolved = resolve_plan(spec, model, xtr, ytr, run_cfg)
        stats, _ = train_plan(model, xtr, ytr, resolved, run_cfg)
        full_mem = stats.total_bytes if plan == "full" else full_mem
        row = per_plan[plan]
        row["acc"].append(_accuracy(model, xte, yte))
        row["mem"].append(stats.total_bytes)
        row["ms"].append(stats.step_ms)
        row["lr"].append(lr)
        row["params"].append(resolved.trainable_elements(model))
        print(
            f"  {plan:<15} lr {lr:<5} acc {row['acc'][-1]:.4f} mem {stats.total_bytes:>12,d} B "
            f"step {stats.step_ms:7.1f} ms  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def run(n_targets: int, samples: int, epochs: int, tune: bool) -> dict:
    torch.set_num_threads(2)
    ds = load_pydocs(0, num_samples=samples, seq_len=SEQ)
    x, y = np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])
    parts = partition(y, CLIENTS, "dirichlet", seed=0, alpha=0.3, min_size=40)
    t0 = time.perf_counter()
    base = create_model("minilm", SEQ, 10, [], seed=0)
    assert isinstance(base, TextClassifier)
    emb = _embed(base.eval().bert, x)
    print(f"embedded {len(y)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    cfg = PersonalizeConfig(epochs=epochs, batch_size=BATCH, lr=QUICK_LR, probe=64)  # tuned unless --quick
    per_plan: dict[str, dict[str, list]] = {
        p: {k: [] for k in ("acc", "mem", "ms", "lr", "params")} for p in PLANS
    }
    global_acc, sizes = [], []
    rng = np.random.default_rng(0)
    targets = sorted(range(CLIENTS), key=lambda c: -len(parts[c]))[:n_targets]  # the largest clients
    for c in targets:
        others = np.concatenate([parts[o] for o in range(CLIENTS) if o != c])
        head = _train_head(emb[others], y[others], c)
        idx = rng.permutation(parts[c])
        half = len(idx) // 2
        data = (x[idx[:half]], y[idx[:half]], x[idx[half:]], y[idx[half:]])
        global_acc.append(_accuracy(_model(head), data[2], data[3]))
        sizes.append(len(idx))
        print(
            f"client {c}: {len(idx)} texts, labels {np.bincount(y[idx], minlength=10).tolist()}, "
            f"global accuracy {global_acc[-1]:.4f}",
            flush=True,
        )
        _client_rows(head, data, cfg, per_plan, tune)
    return _summary(per_plan, global_acc, sizes, cfg, samples)


def _summary(per_plan: dict, global_acc: list, sizes: list, cfg: PersonalizeConfig, samples: int) -> dict:
    full = per_plan["full"]
    full_mem, full_ms, full_acc = (
        statistics.median(full["mem"]),
        statistics.median(full["ms"]),
        np.mean(full["acc"]),
    )
    rows = {}
    for plan, r in per_plan.items():
        mem, ms, acc = statistics.median(r["mem"]), statistics.median(r["ms"]), float(np.mean(r["acc"]))
        rows[plan] = {
            "trainable_params": int(statistics.median(r["params"])),
            "lr_chosen": r["lr"],
            "training_bytes": int(mem),
            "memory_x_less_than_full": round(full_mem / mem, 2),
            "step_ms": round(ms, 1),
            "step_time_vs_full": round(ms / full_ms, 2),
            "accuracy": round(acc, 4),
            "vs_global_points": round(100 * (acc - np.mean(global_acc)), 2),
            "vs_full_points": round(100 * (acc - full_acc), 2),
        }
        print(
            f"{plan:<15} {rows[plan]['trainable_params']:>10,d} params {int(mem):>12,d} B "
            f"{full_mem / mem:6.1f}x less  {ms:8.1f} ms ({ms / full_ms:.2f}x)  acc {acc:.4f}"
            f"  vs global {rows[plan]['vs_global_points']:+.2f} pt"
            f"  vs full {rows[plan]['vs_full_points']:+.2f} pt"
        )
    print(f"global model     accuracy {np.mean(global_acc):.4f} on the clients' local test halves")
    goal = [
        p
        for p, r in rows.items()
        if p != "full" and r["memory_x_less_than_full"] >= 5 and r["vs_full_points"] >= -1
    ]
    print(
        "plans with >= 5x less memory at <= 1 point below full personalization (PockEngine 5.6x):",
        goal or "none",
    )
    return {
        "model": "minilm (all-MiniLM-L6-v2, 22.7M encoder params)",
        "samples": samples,
        "seq_len": SEQ,
        "batch": BATCH,
        "local_epochs": cfg.epochs,
        "client_sizes": sizes,
        "global_accuracy": round(float(np.mean(global_acc)), 4),
        "rows": rows,
        "goal_met_by": goal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=2, help="target clients, largest first (default 2)")
    parser.add_argument("--samples", type=int, default=2000, help="pydocs texts in total (default 2000)")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 client, 1000 texts, 2 epochs, fixed lr 0.03")
    args = parser.parse_args()
    if args.quick:
        result = run(1, 1000, 2, tune=False)
    else:
        result = run(args.clients, args.samples, args.epochs, tune=True)
    out = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
