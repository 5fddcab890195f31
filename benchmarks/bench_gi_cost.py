"""Cost of the gradient-inversion (GI) conversion of one stale update, next to one local update.

Setting: the staleness paper's CPU-scaled setting (Wang & Gao, arXiv 2309.13536; code
pittisl/FL-with-intertwined-heterogeneity ``fixed.py`` at 4ec51ab) on sklearn ``digits``: the
training set sorted by label and cut into 100 contiguous clients (~14 samples, about one class
each); the stale client is the first one holding class 5. The local procedure ``U`` is the paper's
client: 5 full-batch gradient steps of lr 0.01 (``UnrolledSGD()``). Two models:

- ``cnn``: the paper's ``CNNMnist`` shape scaled to 8x8 inputs (conv 1->10 k3, pool, conv 10->20
  k3, pool, fc 80->50->10; dropout left out: the conversion runs in eval mode);
- ``mlp``: stamen's registry ``mlp`` 64-32-10.

Model versions: ``w_{t-tau}`` = 100 full-batch steps (lr 0.5) on the other clients' data from the
seed-0 initialisation, ``w_t`` = 40 more steps (the other classes moved the model on while the
class-5 client was stale). ``Δ_stale = U(w_{t-tau}; D)``, the oracle ``Δ_true = U(w_t; D)``.

Figures, each case in a fresh process (cases interleaved so machine load hits all alike), one
torch thread:

- **local update**: wall time of one ``U`` on the client's data (median of ``--local-repeats``);
- **GI conversion**: wall time of ``convert_stale_update`` at the CPU-scaled config (64 samples,
  ``--iterations`` Adam steps, lr 0.1, box [0, 1]; median of ``--repeats``), and its ratio to the
  local update (the anchor);
- **peak memory**: extra resident memory of the case (``VmHWM`` reset after setup, read after);
- **paper config, extrapolated**: seconds per inversion iteration at 256 samples (median of
  ``--probe`` iterations) × 40,000 iterations — an extrapolation, not a run;
- **quality**: ``e_gi / e_stale`` (oracle L1 errors, benchmark-only) and the server-side estimates
  ``shift_l1 / e_stale`` and ``residual_l1 / e_gi``.

Regenerate::

    .venv/bin/python benchmarks/bench_gi_cost.py            # ~10 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_gi_cost.py --quick    # 200 iterations, 1 repeat

Prints a markdown table and writes ``benchmarks/results/gi_cost[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser
from torch import nn

from stamen.server.staleness import ModelVersions
from stamen.server.staleness.gi_conversion import GIConfig, UnrolledSGD, convert_stale_update
from stamen.server.staleness.gi_switch import oracle_errors
from stamen.simulations.data import load_dataset
from stamen.simulations.timing import clients_holding_class
from stamen.task.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("cnn", "mlp")
MB = 2**20


class DigitsCNN(nn.Module):
    """``CNNMnist`` (conv5-10, conv5-20, fc 320-50-10) scaled to 8x8 digits; input ``(n, 64)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(80, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, 1, 8, 8)  # (n, 1, 8, 8)
        h = torch.relu(nn.functional.max_pool2d(self.conv1(h), 2))  # (n, 10, 4, 4)
        h = torch.relu(nn.functional.max_pool2d(self.conv2(h), 2))  # (n, 20, 2, 2)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))  # (n, 10)


def build(name: str) -> nn.Module:
    if name == "cnn":
        torch.manual_seed(0)
        return DigitsCNN()
    return create_model("mlp", 64, 10, (32,), seed=0)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux); return that RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def setting(name: str) -> dict[str, Any]:
    """Model, versions, the stale client's data and its stale / true deltas."""
    data = load_dataset("digits", seed=0)
    order = np.argsort(data.y_train, kind="stable")
    parts = np.array_split(order, 100)
    client = min(clients_holding_class([data.y_train[p] for p in parts], 5))
    others = np.concatenate([p for i, p in enumerate(parts) if data.y_train[p].tolist().count(5) == 0])
    model = build(name).eval()
    onehot = nn.functional.one_hot(torch.as_tensor(data.y_train), 10).float()
    xo, yo = torch.as_tensor(data.x_train[others]), onehot[others]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    stale = _step(model, params, xo, yo, 100)
    current = _step(model, stale, xo, yo, 40)
    x, y = torch.as_tensor(data.x_train[parts[client]]), onehot[parts[client]]
    proc = UnrolledSGD()
    d_stale = {k: v.numpy() for k, v in proc(model, stale, x, y, create_graph=False).items()}
    d_true = {k: v.numpy() for k, v in proc(model, current, x, y, create_graph=False).items()}
    np_w = {k: v.numpy() for k, v in stale.items()}, {k: v.numpy() for k, v in current.items()}
    return {"model": model, "stale": np_w[0], "current": np_w[1], "x": x, "y": y, "proc": proc,
            "d_stale": d_stale, "d_true": d_true, "client": client, "n": len(x)}  # fmt: skip


def _step(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int):
    delta = UnrolledSGD(steps=steps, lr=0.5)(model, params, x, y, create_graph=False)
    return {k: (params[k] + delta[k]).detach() for k in params}


def run_case(name: str, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (called in a fresh subprocess)."""
    torch.set_num_threads(1)
    s = setting(name)
    versions = ModelVersions(s["current"], s["stale"], 40)
    out: dict[str, Any] = {
        "model": name,
        "kind": kind,
        "params": sum(p.numel() for p in s["model"].parameters()),
    }
    base = reset_peak()
    if kind == "local":
        params = {k: torch.as_tensor(v) for k, v in s["current"].items()}
        times = []
        for _ in range(args.local_repeats):
            t0 = time.perf_counter()
            s["proc"](s["model"], params, s["x"], s["y"], create_graph=False)
            times.append(time.perf_counter() - t0)
        out["seconds"] = statistics.median(times)
    else:
        probe = kind == "probe"
        cfg = GIConfig(num_samples=256 if probe else 64, iterations=args.probe if probe else args.iterations,
                       lr=0.1, box=(0.0, 1.0))  # fmt: skip
        times = []
        for _ in range(1 if probe else args.repeats):
            t0 = time.perf_counter()
            conv = convert_stale_update(s["model"], versions, s["d_stale"], s["proc"], input_shape=(64,),
                                        num_classes=10, config=cfg)  # fmt: skip
            times.append(time.perf_counter() - t0)
        out["seconds"] = statistics.median(times)
        out["seconds_per_iteration"] = out["seconds"] / cfg.iterations
        if not probe:
            e_gi, e_stale = oracle_errors(s["d_true"], conv.delta, s["d_stale"])
            out.update(e_gi=e_gi, e_stale=e_stale, residual_l1=conv.residual_l1, shift_l1=conv.shift_l1)
    out["peak_extra_mb"] = (_status_kb("VmHWM") - base) / 1024
    out["client_samples"] = s["n"]
    return out


def main() -> None:
    ap = parser(__doc__, quick="200 iterations, 1 repeat, 10 local repeats", out="gi_cost.json")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--local-repeats", type=int, default=50)
    ap.add_argument("--probe", type=int, default=20, help="inversion iterations timed at 256 samples")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.repeats, args.local_repeats, args.probe = 200, 1, 10, 5
    if args.worker:
        print(json.dumps(run_case(args.worker[0], args.worker[1], args)))
        return
    prov, load_start = Provenance.capture(), os.getloadavg()  # the code as it was run
    passthrough = ["--iterations", str(args.iterations), "--repeats", str(args.repeats),
                   "--local-repeats", str(args.local_repeats), "--probe", str(args.probe)]  # fmt: skip
    cases: dict[str, dict[str, Any]] = {}
    for kind in ("local", "gi", "probe"):  # interleaved: cnn, mlp for each kind
        for name in MODELS:
            cmd = [sys.executable, __file__, *passthrough, "--worker", name, kind]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            cases[f"{name}/{kind}"] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  {name}/{kind}: {cases[f'{name}/{kind}']['seconds']:.4g} s", file=sys.stderr, flush=True)
    rows = report(cases, args)
    meta = {"loadavg_start": load_start, "loadavg_end": os.getloadavg()}
    config = {k: v for k, v in vars(args).items() if k not in ("out", "_default_out")}
    prov.write(out_path(args), {**meta, "config": config, "cases": cases, "rows": rows})


def report(cases: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Print the markdown table; return its rows."""
    print(f"\n| model | params | local update | GI conversion ({args.iterations} it, 64 samples) | "
          "GI / local | peak extra RSS GI / local | paper config (256 samples, 40k it), extrapolated | "
          "e_gi / e_stale | shift / e_stale | residual / e_gi |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in MODELS:
        loc, gi, probe = cases[f"{name}/local"], cases[f"{name}/gi"], cases[f"{name}/probe"]
        row = {
            "model": name, "params": gi["params"], "local_s": loc["seconds"], "gi_s": gi["seconds"],
            "ratio": gi["seconds"] / loc["seconds"], "gi_peak_mb": gi["peak_extra_mb"],
            "local_peak_mb": loc["peak_extra_mb"],
            "paper_extrapolated_s": probe["seconds_per_iteration"] * 40_000,
            "e_gi_over_e_stale": gi["e_gi"] / gi["e_stale"],
            "shift_over_e_stale": gi["shift_l1"] / gi["e_stale"],
            "residual_over_e_gi": gi["residual_l1"] / gi["e_gi"],
        }  # fmt: skip
        rows.append(row)
        print(f"| {name} | {row['params']:,} | {1e3 * row['local_s']:.2f} ms | {row['gi_s']:.1f} s | "
              f"{row['ratio']:,.0f}× | {row['gi_peak_mb']:.1f} / {row['local_peak_mb']:.1f} MB | "
              f"{row['paper_extrapolated_s'] / 60:.0f} min | {row['e_gi_over_e_stale']:.2f} | "
              f"{row['shift_over_e_stale']:.2f} | {row['residual_over_e_gi']:.2f} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
