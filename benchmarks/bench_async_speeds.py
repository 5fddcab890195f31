"""Time to accuracy with heterogeneous device speeds: synchronous FedAvg vs FedAsync vs FedBuff.

Setting: the built-in ``async-speeds`` scenario (100 clients, Dirichlet 0.5, ``mlp`` 64 hidden,
per-client speeds log-normal with σ = 1, 20 clients training at once / per round) on ``mnist1d``
(8,000 samples) and ``digits`` (``--set data.dataset=digits``), in-process engine with its virtual
clock (simulated seconds: compute from the timing model, transfers from the real envelope bytes).
Every mode gets the same number of client updates (1,200; ``--quick``: 300) and an evaluation every
20 updates:

- ``sync``: FedAvg rounds of 20 clients (60 rounds; a round lasts as long as its slowest client);
- ``fedbuff``: buffer 10, staleness ``1/sqrt(1+τ)`` (120 versions);
- ``fedasync``: α = 0.6, staleness ``(1+τ)^-0.5`` (1,200 versions).

Figures per data set and mode, medians over ``--seeds``: simulated seconds until the test accuracy
first reaches the target (the anchor: 90 % of sync FedAvg's median final accuracy, measured in the
same run), the accuracy at a fixed simulated-time budget (the shortest run's end, so every mode
covers it), the final accuracy after the 1,200 updates, and wall seconds (a loaded machine: noisy).
A plot of accuracy against simulated time (median over seeds at each evaluation) goes next to the
JSON.

Regenerate::

    .venv/bin/python benchmarks/bench_async_speeds.py            # ~8 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_async_speeds.py --quick    # digits, 1 seed, 300 updates

Writes ``benchmarks/results/async_speeds[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

MODES: dict[str, tuple[str, ...]] = {  # overrides per mode, for 1,200 updates (rounds scaled by --quick)
    "sync": ("server.mode=sync", "rounds=60", "eval.every=1"),
    "fedbuff": ("server.mode=fedbuff", "rounds=120", "eval.every=2"),
    "fedasync": ("server.mode=fedasync", "rounds=1200", "eval.every=20", "server.staleness=polynomial"),
}
TARGET_SHARE = 0.9


def _scaled(overrides: tuple[str, ...], share: float) -> list[str]:
    out = []
    for o in overrides:
        key, _, val = o.partition("=")
        out.append(f"rounds={max(1, int(int(val) * share))}" if key == "rounds" else o)
    return out


def run_one(dataset: str, mode: str, seed: int, share: float) -> dict[str, Any]:
    """One run: its accuracy curve against simulated seconds."""
    overrides = [f"data.dataset={dataset}", f"seed={seed}", *_scaled(MODES[mode], share)]
    t0 = time.perf_counter()
    res = run_engine("inprocess", SimulationPlan.from_scenario(load_scenario("async-speeds", overrides)))
    curve = [(r.sim_time_s, r.accuracy) for r in res.rounds if math.isfinite(r.accuracy)]
    return {"dataset": dataset, "mode": mode, "seed": seed, "overrides": overrides,
            "wall_s": time.perf_counter() - t0, "curve": curve}  # fmt: skip


def time_to(curve: list[tuple[float, float]], target: float) -> float:
    """First simulated second at which the accuracy reaches ``target`` (NaN if never)."""
    return next((t for t, a in curve if a >= target), math.nan)


def accuracy_at(curve: list[tuple[float, float]], budget: float) -> float:
    """Accuracy of the last evaluation at or before ``budget`` simulated seconds (NaN if none)."""
    seen = [a for t, a in curve if t <= budget]
    return seen[-1] if seen else math.nan


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if len(finite) * 2 > len(values) else math.nan  # most must reach it


def summarize(runs: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """Per mode: time to target, accuracy at the budget, final accuracy, wall seconds (medians)."""
    mine = [r for r in runs if r["dataset"] == dataset]
    sync_final = statistics.median(r["curve"][-1][1] for r in mine if r["mode"] == "sync")
    target = TARGET_SHARE * sync_final
    budget = min(r["curve"][-1][0] for r in mine)
    rows = {}
    for mode in MODES:
        rs = [r for r in mine if r["mode"] == mode]
        rows[mode] = {
            "time_to_target_s": _median([time_to(r["curve"], target) for r in rs]),
            "reached": sum(math.isfinite(time_to(r["curve"], target)) for r in rs),
            "accuracy_at_budget": statistics.median(accuracy_at(r["curve"], budget) for r in rs),
            "final_accuracy": statistics.median(r["curve"][-1][1] for r in rs),
            "end_sim_s": statistics.median(r["curve"][-1][0] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
        }
    return {"target": target, "budget_s": budget, "modes": rows}


def plot(runs: list[dict[str, Any]], datasets: list[str], path: Any) -> None:
    """Accuracy against simulated seconds, median over seeds, one panel per data set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * len(datasets), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, ds in zip(axes, datasets, strict=True):
        for mode in MODES:
            curves = [r["curve"] for r in runs if r["dataset"] == ds and r["mode"] == mode]
            n = min(len(c) for c in curves)
            t = np.median([[p[0] for p in c[:n]] for c in curves], axis=0)
            a = np.median([[p[1] for p in c[:n]] for c in curves], axis=0)
            ax.plot(t, a, label=mode)
        ax.set(title=f"async-speeds, {ds}", xlabel="simulated time (s)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = parser(__doc__, quick="digits, 1 seed, 300 updates", out="async_speeds.json")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    datasets, seeds, share = (["digits"], 1, 0.25) if args.quick else (["mnist1d", "digits"], args.seeds, 1.0)
    torch.set_num_threads(1)
    prov = Provenance.capture()
    runs = []
    for ds in datasets:
        for seed in range(seeds):
            for mode in MODES:
                runs.append(run_one(ds, mode, seed, share))
                r = runs[-1]
                print(f"  {ds} {mode:8s} seed {seed}: final {r['curve'][-1][1]:.3f} at "
                      f"{r['curve'][-1][0]:.0f} sim s ({r['wall_s']:.0f} s wall)", flush=True)  # fmt: skip
    summary = {ds: summarize(runs, ds) for ds in datasets}
    for ds, s in summary.items():
        print(f"\n**{ds}**: target {s['target']:.3f} (= {TARGET_SHARE:.0%} of sync FedAvg's final), "
              f"budget {s['budget_s']:.0f} simulated s")  # fmt: skip
        print("| mode | sim s to target (reached) | acc at budget | final acc (sim s) | wall s |")
        print("|---|---|---|---|---|")
        for mode, m in s["modes"].items():
            print(f"| {mode} | {m['time_to_target_s']:.0f} ({m['reached']}/{seeds}) | "
                  f"{m['accuracy_at_budget']:.3f} | {m['final_accuracy']:.3f} ({m['end_sim_s']:.0f}) | "
                  f"{m['wall_s']:.0f} |")  # fmt: skip
    out = out_path(args)
    plot(runs, datasets, out.with_suffix(".png"))
    prov.write(out, {"setting": {"datasets": datasets, "seeds": seeds, "update_share": share,
               "modes": MODES, "target_share": TARGET_SHARE}, "summary": summary, "runs": runs})  # fmt: skip


if __name__ == "__main__":
    main()
