"""Device-level memory of sparse-backprop personalization on the real all-MiniLM-L6-v2: the peak
RSS of the whole run (weights included), full fine-tuning vs the sparse plans, with the frozen
weights held four ways, and the personalized accuracy of each.

BENCHMARKS §4.1's "training memory" (saved activations + gradients + optimizer state) leaves out
the weights, which every plan holds: ≈ 90 MB of float32 for MiniLM. Here each configuration runs
in a fresh process (``bench_edge_device_run.py``) and the kernel reports its peak: ``VmHWM`` after
resetting it once the interpreter, torch and the data are loaded, so "above baseline" is what
the model and its training add (weights, activations, gradients, temporaries, allocator slack),
and ``RssAnon`` sampled every millisecond for the anonymous part. Frozen weights (the plan never
trains them; :mod:`stamen.edge.device_model`):

- ``copy``: private float32 copies (how §4.1 ran: the usual load);
- ``mmap``: memory-mapped from the version's weights file (file-backed page cache: only touched
  pages are resident, they count in RSS as ``RssFile``, not in ``RssAnon``; identical math);
- ``fp16`` / ``int8``: frozen linear weights quantized (2 / 1 byte per weight, per-row int8
  scales) and dequantized per layer on the fly; the rest mapped as in ``mmap``.

Data, global model, plans and step-size choice follow ``bench_edge_personalize_minilm.py``
(pydocs, 64 tokens, batch 16, 2 epochs, Dirichlet(0.3) over 8 clients, the largest ``--clients``
targets, step size per plan *and* frozen mode from LRS on a 25 % hold-out of the train half). The
``budget=FULL/8`` plan is resolved once per client on float32 weights and reused by every mode; its
resolution (a probe with full backprop) is measured in a process of its own (``plan`` rows): on a
device it runs once, or on the server as TinyEngine/PockEngine do. Accuracy is that of the
*served* model, float32 global weights plus the trained tensors (the overlay), on the client's
local test half.

    .venv/bin/python benchmarks/bench_edge_personalize_device.py [--clients 2] [--quick]

Writes ``benchmarks/results/edge_personalize_device.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_edge_personalize_minilm as base_bench
from _provenance import Provenance

from stamen.edge.device_model import SafetensorsFile, device_model
from stamen.edge.modbudget import measure_plan_bytes
from stamen.edge.modplans import ModulePlan
from stamen.edge.personalization import PersonalizeConfig, resolve_plan, train_plan
from stamen.edge.plans import PlanSpec, parse_plan
from stamen.simulations.partition import partition
from stamen.simulations.text_data import load_pydocs
from stamen.task.models.minilm import MINILM, TextClassifier

RESULTS = Path(__file__).resolve().parent / "results" / "edge_personalize_device.json"
CHILD = Path(__file__).resolve().with_name("bench_edge_device_run.py")
WORD = "bert.embeddings.word_embeddings.weight"
#: glibc malloc: "default" (dynamic mmap threshold: freed blocks below it stay in the heap) or
#: "fixed" (MALLOC_MMAP_THRESHOLD_=65536: blocks >= 64 kB are mmapped and unmapped when freed).
ALLOCATORS = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
PLANS = ("last_k=1", "budget=FULL/8")
CONFIGS = [
    *[("full", "copy", a) for a in ALLOCATORS],
    *[(p, m, a) for p in PLANS for m in ("copy", "int8") for a in ALLOCATORS],
    *[(p, m, "fixed") for p in PLANS for m in ("mmap", "fp16")],
]
SEQ, BATCH, CLIENTS, THREADS = base_bench.SEQ, base_bench.BATCH, base_bench.CLIENTS, 2
MB = 1e6


def _build(weights: Path, trained: set[str], frozen: str, x: np.ndarray | None = None) -> torch.nn.Module:
    rows = {WORD: np.unique(x)} if x is not None and frozen != "copy" else None
    return device_model(lambda: TextClassifier(MINILM, 10), [SafetensorsFile(weights)], trained, frozen, rows)


def _trained(plan: ModulePlan) -> set[str]:
    return set(plan.params) | {w for w, _ in plan.channels}


def _served_accuracy(weights: Path, overlay: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of float32 global weights + the trained tensors (what the device serves)."""
    model = _build(weights, set(), "copy")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in overlay.items()}, strict=False)
    return base_bench._accuracy(model, x, y)


def _pick_lr(weights: Path, plan: ModulePlan, frozen: str, data: tuple, cfg: PersonalizeConfig) -> float:
    """The device's own step size: best of LRS on a 25 % hold-out of its train half (ties: smaller)."""
    x, y = data
    cut, scores = max(1, len(y) // 4), []
    for lr in base_bench.LRS:
        model = _build(weights, _trained(plan), frozen, x[cut:])
        train_plan(model, x[cut:], y[cut:], plan, replace(cfg, lr=lr))
        trained = {n: p.detach().numpy() for n, p in model.named_parameters() if n in _trained(plan)}
        scores.append((_served_accuracy(weights, trained, x[:cut], y[:cut]), -lr))
    return -max(scores)[1]


def _resolve(weights: Path, text: str, data: tuple, cfg: PersonalizeConfig) -> tuple[ModulePlan, int]:
    """The plan on float32 weights; ``budget=FULL/n`` = the full plan's measured training bytes / n."""
    x, y = data
    model = _build(weights, set(), "copy")
    spec = parse_plan(text if not text.startswith("budget=FULL/") else "full")
    plan = resolve_plan(spec, model, x, y, cfg)
    budget = 0
    if text.startswith("budget=FULL/"):
        xb, yb = torch.from_numpy(x[:BATCH]), torch.from_numpy(y[:BATCH])
        budget = measure_plan_bytes(model, plan, xb, yb, 0) // int(text.split("/")[1])
        plan = resolve_plan(PlanSpec("budget", budget), _build(weights, set(), "copy"), x, y, cfg)
    assert isinstance(plan, ModulePlan)
    return plan, budget


def _child(spec: dict, env: dict[str, str], work: Path) -> dict:
    spec = {**spec, "out": str(work / "run.json"), "out_weights": str(work / "run.safetensors")}
    with open(work / "spec.json", "w") as fh:  # the child's input, not a result
        json.dump(spec, fh)
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(work / "spec.json")],
        capture_output=True, text=True, timeout=3600, check=False, env={**os.environ, **env},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(Path(spec["out"]).read_text())


def _plan_json(plan: ModulePlan) -> dict:
    chans = [[w, list(c)] for w, c in plan.channels]
    return {"text": plan.text, "params": list(plan.params), "channels": chans, "full": plan.full}


def _client(weights: Path, data: tuple, cfg: PersonalizeConfig, tune: bool, work: Path) -> dict[str, dict]:
    """Every configuration for one client: its own process, its served accuracy."""
    xtr, ytr, xte, yte = data
    np.savez(work / "train.npz", x=xtr, y=ytr)
    common = {"weights": [str(weights)], "data": str(work / "train.npz"), "threads": THREADS,
              "seed": cfg.seed, "batch": BATCH, "epochs": cfg.epochs}  # fmt: skip
    rows: dict[str, dict] = {}
    plans = {text: _resolve(weights, text, (xtr, ytr), cfg) for text in ("full", *PLANS)}
    lrs: dict[tuple[str, str], float] = {}
    for text, frozen, alloc in CONFIGS:
        plan, budget = plans[text]
        math_mode = "copy" if frozen == "mmap" else frozen  # mmap computes exactly what copy does
        if (text, math_mode) not in lrs:
            lrs[text, math_mode] = _pick_lr(weights, plan, math_mode, (xtr, ytr), cfg) if tune else cfg.lr
        lr = lrs[text, math_mode]
        spec = {**common, "mode": "train", "plan": _plan_json(plan), "frozen": frozen, "lr": lr}
        res = _child(spec, ALLOCATORS[alloc], work)
        overlay = load_file(work / "run.safetensors")
        res |= {"lr": lr, "accuracy": _served_accuracy(weights, overlay, xte, yte)}
        res["trainable_params"] = sum(int(v.size) for v in overlay.values())
        rows[f"{text} {frozen} {alloc}"] = res
        print(_line(f"{text} {frozen} {alloc}", res), flush=True)
        if budget and frozen == "copy" and alloc == "default":
            spec = {**common, "mode": "plan", "budget": budget, "probe": cfg.probe, "frozen": "copy"}
            rows[f"{text} resolve default"] = res = _child(spec, {}, work)
            print(_line(f"{text} resolve default", res), flush=True)
    return rows


def _above(res: dict) -> tuple[float, float]:
    """Peak RSS and peak anonymous memory above the baseline, in MB."""
    b = res["baseline"]
    return (res["hwm"] - b["VmRSS"]) / MB, (res["peak_anon"] - b["RssAnon"]) / MB


def _line(name: str, res: dict) -> str:
    rss, anon = _above(res)
    acc = f"acc {res['accuracy']:.4f} lr {res['lr']}" if "accuracy" in res else "(plan resolution)"
    proc = res["hwm"] / MB
    return f"  {name:<30} peak RSS +{rss:6.1f} MB  anon +{anon:6.1f} MB  (process {proc:4.0f} MB)  {acc}"


def run(n_targets: int, samples: int, epochs: int, tune: bool) -> dict:
    torch.set_num_threads(THREADS)
    ds = load_pydocs(0, num_samples=samples, seq_len=SEQ)
    x, y = np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])
    parts = partition(y, CLIENTS, "dirichlet", seed=0, alpha=0.3, min_size=40)
    encoder = base_bench.create_model("minilm", SEQ, 10, [], seed=0)
    emb = base_bench._embed(encoder.eval().bert, x)
    cfg = PersonalizeConfig(epochs=epochs, batch_size=BATCH, lr=base_bench.QUICK_LR, probe=64)
    rng, per_client, global_acc = np.random.default_rng(0), [], []
    targets = sorted(range(CLIENTS), key=lambda c: -len(parts[c]))[:n_targets]
    with tempfile.TemporaryDirectory(prefix="stamen-device-") as tmp:
        for c in targets:
            work = Path(tmp) / f"client{c}"
            work.mkdir()
            others = np.concatenate([parts[o] for o in range(CLIENTS) if o != c])
            model = base_bench._model(base_bench._train_head(emb[others], y[others], c))
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "global.safetensors")
            )
            idx = rng.permutation(parts[c])
            half = len(idx) // 2
            data = (x[idx[:half]], y[idx[:half]], x[idx[half:]], y[idx[half:]])
            global_acc.append(base_bench._accuracy(model, data[2], data[3]))
            print(f"client {c}: {len(idx)} texts, global accuracy {global_acc[-1]:.4f}", flush=True)
            per_client.append(_client(work / "global.safetensors", data, cfg, tune, work))
    return _summary(per_client, global_acc, epochs, samples)


def _summary(per_client: list[dict], global_acc: list[float], epochs: int, samples: int) -> dict:
    rows = {}
    for name in per_client[0]:
        runs = [c[name] for c in per_client]
        anchor = f"full copy {name.rsplit(' ', 1)[1]}"  # full fine-tuning under the same allocator
        rss = statistics.median(_above(r)[0] for r in runs)
        anon = statistics.median(_above(r)[1] for r in runs)
        full_rss = statistics.median(_above(c[anchor])[0] for c in per_client)
        full_anon = statistics.median(_above(c[anchor])[1] for c in per_client)
        row = {
            "peak_rss_above_baseline_mb": round(rss, 1),
            "peak_anon_above_baseline_mb": round(anon, 1),
            "device_x_less_rss": round(full_rss / rss, 2),
            "device_x_less_anon": round(full_anon / anon, 2),
            "process_peak_rss_mb": round(statistics.median(r["hwm"] for r in runs) / MB, 1),
            "baseline_rss_mb": round(statistics.median(r["baseline"]["VmRSS"] for r in runs) / MB, 1),
        }
        if "accuracy" in runs[0]:
            acc = float(np.mean([r["accuracy"] for r in runs]))
            full_acc = float(np.mean([c[anchor]["accuracy"] for c in per_client]))
            row |= {
                "accuracy": round(acc, 4),
                "vs_full_points": round(100 * (acc - full_acc), 2),
                "training_bytes": int(statistics.median(r["training_bytes"] for r in runs)),
                "step_ms": round(statistics.median(r["step_ms"] for r in runs), 1),
                "lr_chosen": [r["lr"] for r in runs],
                "trainable_params": runs[0]["trainable_params"],
            }
        rows[name] = row
        print(f"{name:<30} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    goal = [
        n for n, r in rows.items() if r.get("device_x_less_rss", 0) >= 5 and r.get("vs_full_points", -9) >= -1
    ]
    print("device-level >= 5x less peak RSS at <= 1 point below full:", goal or "none")
    return {
        "model": "minilm (all-MiniLM-L6-v2, 22.7M encoder params, fp32 90.9 MB)",
        "samples": samples, "seq_len": SEQ, "batch": BATCH, "local_epochs": epochs, "threads": THREADS,
        "global_accuracy": round(float(np.mean(global_acc)), 4),
        "rows": rows, "goal_met_by": goal,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=2, help="target clients, largest first (default 2)")
    parser.add_argument("--samples", type=int, default=2000, help="pydocs texts in total (default 2000)")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 client, 1000 texts, fixed lr 0.03")
    args = parser.parse_args()
    prov = Provenance.capture()
    result = (
        run(1, 1000, 2, tune=False) if args.quick else run(args.clients, args.samples, args.epochs, tune=True)
    )
    out = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS
    prov.write(out, result)


if __name__ == "__main__":
    main()
