"""Sparse-backprop personalization on a CNN: training memory and step time per plan vs full
backprop, and personalized accuracy on non-iid clients vs the global model.

Setup: sklearn digits (1797 8×8 images) split over 10 clients with Dirichlet(α=0.3) label skew
(``stamen.simulations.partition``); each client's samples are halved into local train / local
test. The global model — a CNN 1×8×8 → conv32 → conv32 → conv64/2 → pool → fc64 → 10 — is trained
on the pooled train halves with Adam (a stand-in for a converged FedAvg model). Every client then
personalizes the same global model with each plan (SGD, no momentum, same epochs and batch for all
plans; the step size is chosen by the device itself from {0.003, 0.01, 0.03, 0.1} on a 25 % hold-out
of its train half) and is scored on its own local test half. The anchor is ``full`` (stock autograd, every
parameter), measured in the same run.

Training memory = bytes autograd saves for backward (``saved_tensors_hooks``, by storage, resident
weights excluded) + gradients + optimizer state, measured on a full batch; it equals the plan's
memory model (tested). ``bias (stock)`` is bias-only training with stock autograd, to show what the
lean path (1-bit ReLU masks instead of saved inputs) buys.

    .venv/bin/python benchmarks/bench_edge_personalize.py [--seeds 3] [--quick]

Writes ``benchmarks/results/edge_personalize.json`` (``edge_personalize_quick.json`` with ``--quick``;
``--out`` elsewhere).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from _provenance import Provenance, out_path, parser

from stamen.edge.arch import EdgeNet, build_model
from stamen.edge.personalization import PersonalizeConfig, _measure_step, resolve_plan, train_plan
from stamen.edge.plans import PlanSpec, parse_plan
from stamen.simulations.data import load_dataset
from stamen.simulations.partition import partition

ARCH = {
    "name": "cnn",
    "input_shape": [1, 8, 8],
    "channels": [32, 32, 64],
    "strides": [1, 1, 2],
    "hidden": [64],
    "classes": 10,
}
PLANS = ["full", "bias", "last_k=1", "last_k=2", "channels=0.25", "budget=FULL/8", "budget=FULL/20"]
BATCH = 32
LRS = (0.003, 0.01, 0.03, 0.1)
Client = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # local train x, y; local test x, y


def _global_model(x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> EdgeNet:
    model = build_model(ARCH, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)  # host-side training of the global model
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _accuracy(model: EdgeNet, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _stock_bias_bytes(state: dict, x: np.ndarray, y: np.ndarray) -> int:
    """Bias-only training with stock autograd: what autograd saves (+ bias gradients)."""
    model = build_model(ARCH)
    model.load_state_dict(state)
    params = [p for n, p in model.named_parameters() if n.endswith("bias")]
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith("bias"))
    resident = {p.untyped_storage().data_ptr() for p in model.parameters()}
    box: list[torch.Tensor] = []
    xb, yb = torch.from_numpy(x[:BATCH].copy()), torch.from_numpy(y[:BATCH].copy())
    saved = _measure_step(lambda: box.append(F.cross_entropy(model(xb), yb)), resident)
    return saved + 4 * sum(p.numel() for p in params)


def _clients(seed: int, n_clients: int) -> tuple[list[Client], np.ndarray, np.ndarray]:
    ds = load_dataset("digits", seed=seed)
    x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float32)
    y = np.concatenate([ds.y_train, ds.y_test]).astype(np.int64)
    parts = partition(y, n_clients, "dirichlet", seed=seed, alpha=0.3, min_size=20)
    rng = np.random.default_rng(seed)
    clients: list[Client] = []
    for idx in parts:
        idx = rng.permutation(idx)
        half = len(idx) // 2
        clients.append((x[idx[:half]], y[idx[:half]], x[idx[half:]], y[idx[half:]]))
    pooled_x = np.concatenate([c[0] for c in clients])
    pooled_y = np.concatenate([c[1] for c in clients])
    return clients, pooled_x, pooled_y


def run(seeds: int, n_clients: int, global_epochs: int, local_epochs: int) -> dict:
    torch.set_num_threads(1)
    cfg = PersonalizeConfig(epochs=local_epochs, batch_size=BATCH, lr=0.05)
    per_plan: dict[str, dict[str, list[float]]] = {
        p: {"acc": [], "mem": [], "ms": [], "lr": []} for p in PLANS
    }
    global_acc, stock_bias = [], []
    for seed in range(seeds):
        clients, px, py = _clients(seed, n_clients)
        t0 = time.perf_counter()
        state = _global_model(px, py, seed, global_epochs).state_dict()
        print(f"seed {seed}: global model trained in {time.perf_counter() - t0:.1f} s on {len(py)} samples")
        full_mem = None
        stock_bias.append(_stock_bias_bytes(state, px, py))
        for xtr, ytr, xte, yte in clients:
            model = build_model(ARCH)
            model.load_state_dict(state)
            global_acc.append(_accuracy(model, xte, yte))
            for plan in PLANS:
                spec = _spec(plan, full_mem)
                lr = _pick_lr(state, spec, xtr, ytr, cfg)
                model = build_model(ARCH)
                model.load_state_dict(state)
                run_cfg = replace(cfg, lr=lr)
                resolved = resolve_plan(spec, model, xtr, ytr, run_cfg)
                stats, _ = train_plan(model, xtr, ytr, resolved, run_cfg)
                full_mem = stats.total_bytes if plan == "full" else full_mem
                per_plan[plan]["acc"].append(_accuracy(model, xte, yte))
                per_plan[plan]["mem"].append(stats.total_bytes)
                per_plan[plan]["ms"].append(stats.step_ms)
                per_plan[plan]["lr"].append(lr)
    return _summary(per_plan, global_acc, stock_bias, seeds, n_clients, cfg)


def _pick_lr(state: dict, spec: PlanSpec, x: np.ndarray, y: np.ndarray, cfg: PersonalizeConfig) -> float:
    """The device's own choice of step size: best of LRS on a 25 % hold-out of its train half."""
    cut = max(1, len(y) // 4)
    best, best_lr = -1.0, LRS[0]
    for lr in LRS:
        model = build_model(ARCH)
        model.load_state_dict(state)
        run_cfg = replace(cfg, lr=lr)
        train_plan(model, x[cut:], y[cut:], resolve_plan(spec, model, x[cut:], y[cut:], run_cfg), run_cfg)
        acc = _accuracy(model, x[:cut], y[:cut])
        if acc > best:
            best, best_lr = acc, lr
    return best_lr


def _spec(plan: str, full_mem: int | None) -> PlanSpec:
    if plan.startswith("budget=FULL/"):
        assert full_mem is not None
        return PlanSpec("budget", full_mem // int(plan.split("/")[1]))
    return parse_plan(plan)


def _summary(
    per_plan: dict,
    global_acc: list[float],
    stock_bias: list[int],
    seeds: int,
    n_clients: int,
    cfg: PersonalizeConfig,
) -> dict:
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
            "lr_chosen_median": statistics.median(r["lr"]),
            "training_bytes": int(mem),
            "memory_x_less_than_full": round(full_mem / mem, 2),
            "step_ms": round(ms, 3),
            "step_time_vs_full": round(ms / full_ms, 2),
            "accuracy": round(acc, 4),
            "vs_global_points": round(100 * (acc - np.mean(global_acc)), 2),
            "vs_full_points": round(100 * (acc - full_acc), 2),
        }
        print(
            f"{plan:<16} {int(mem):>10,d} B  {full_mem / mem:6.1f}x less  {ms:7.2f} ms ({ms / full_ms:.2f}x)"
            f"  acc {acc:.4f}  vs global {rows[plan]['vs_global_points']:+.2f} pt"
            f"  vs full {rows[plan]['vs_full_points']:+.2f} pt"
        )
    sb = statistics.median(stock_bias)
    print(
        f"{'bias (stock)':<16} {int(sb):>10,d} B  {full_mem / sb:6.1f}x less"
        "   (stock autograd, same bias-only plan)"
    )
    print(f"global model     accuracy {np.mean(global_acc):.4f} on the clients' local test halves")
    goal = [
        p
        for p, r in rows.items()
        if p != "full" and r["memory_x_less_than_full"] >= 5 and r["vs_full_points"] >= -1
    ]
    print(f"plans with >= 5x less memory at <= 1 point below full personalization: {goal or 'none'}")
    return {
        "arch": ARCH,
        "seeds": seeds,
        "clients": n_clients,
        "batch": BATCH,
        "local_epochs": cfg.epochs,
        "lr": cfg.lr,
        "global_accuracy": round(float(np.mean(global_acc)), 4),
        "stock_bias_training_bytes": int(sb),
        "rows": rows,
        "goal_met_by": goal,
    }


def main() -> None:
    ap = parser(__doc__, quick="1 seed, 5 clients, fewer epochs", out="edge_personalize.json")
    ap.add_argument("--seeds", type=int, default=3, help="data splits / global models (default 3)")
    args = ap.parse_args()
    prov = Provenance.capture()
    result = run(1, 5, 10, 10) if args.quick else run(args.seeds, 10, 10, 10)
    prov.write(out_path(args), result)


if __name__ == "__main__":
    main()
