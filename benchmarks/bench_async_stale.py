"""Unlimited staleness (Wang & Gao, arXiv 2309.13536), CPU-scaled: how much of the accuracy that a
delayed class loses each correction wins back, and what the gradient-inversion (GI) one costs.

Setting: the built-in ``async-stale`` scenario (digits in 4 label shards per client over 20
clients, all 20 every round, the registered ``cnn`` 10-20-50, lr 0.5, batch 8); the 6 clients with a
quarter or more class-5 data train, every synchronous round, from the model of ``τ = 10`` rounds ago
(``--rounds`` rounds, 30 by default; the paper: MNIST, 100 clients, τ = 40, hundreds of epochs).
Variants: ``none`` (no client delayed: the no-staleness upper bound), ``direct`` (stale updates used
as they are), ``weighted`` (``2^(−τ/20)``, the paper's weighted-aggregation baseline), ``dcasgd``
(λ = 4), ``gi`` (the server-side GI conversion with the ``gi`` switch policy, 32 inversion samples,
50 Adam steps, on ``--gi-seeds`` seeds (3 by default; fewer when CPU is short) —
the paper's 256 samples × 40,000 iterations are out of CPU reach, see §15).

Figures, medians over ``--seeds``: final overall test accuracy and final accuracy on class 5 (the
delayed class) — both also as the gain over ``direct`` in points, the paper's terms (its anchor: up to
+25 % accuracy over the baselines) — and rounds until the overall accuracy first reaches the target
(85 % of the no-staleness run's final, measured in the same run) as a change against ``direct`` (the
paper's anchor: −35 % epochs to target); for ``gi``, how many stale updates it converted (the
switch-back rule stops it) and the extra
wall seconds per conversion over ``direct`` (a loaded machine: a rough figure; §15 measures it carefully).

Regenerate::

    .venv/bin/python benchmarks/bench_async_stale.py            # ~12 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_async_stale.py --quick    # 1 seed, 8 rounds

Writes ``benchmarks/results/async_stale[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser

import stamen.server.federation as federation
from stamen.server.driver.driver import EvalFn
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import test_data
from stamen.simulations.scenario import load_scenario
from stamen.task.models import model_structure
from stamen.task.weights import Weights, evaluate_model, set_weights

VARIANTS: dict[str, tuple[str, ...]] = {
    "none": ("timing.delay_mode=none",),
    "direct": ("server.compensation=direct",),
    "weighted": ("server.compensation=weighted",),
    "dcasgd": ("server.compensation=dcasgd",),
    "gi": ("server.compensation=gi", "server.gi_iterations=50"),
}
DELAYED_CLASS = 5
TARGET_SHARE = 0.85
_GI_POLICIES: list[Any] = []  # the gi policies the runs built, to read their conversion counts


def _tracked_gi_policy(cfg: Any) -> Any:
    policy = _ORIGINAL_GI_POLICY(cfg)
    _GI_POLICIES.append(policy)
    return policy


_ORIGINAL_GI_POLICY = federation.gi_policy
federation.gi_policy = _tracked_gi_policy  # stale_handling looks it up at call time


class ClassTrackingPlan(SimulationPlan):
    """The plan, whose evaluator also records the accuracy on the delayed class at each evaluation."""

    class_curve: list[float]

    def evaluator(self) -> EvalFn:
        test = test_data(self.data)
        model = model_structure(self.cfg.task)
        mask = np.asarray(test.y) == DELAYED_CLASS
        x = torch.as_tensor(np.asarray(test.x)[mask])
        self.class_curve = []

        def evaluate(weights: Weights) -> tuple[float, float]:
            set_weights(model, weights)
            with torch.no_grad():
                pred = model(x).argmax(1).numpy()
            self.class_curve.append(float(np.mean(pred == DELAYED_CLASS)))
            return evaluate_model(model, test.x, test.y)

        return evaluate


def run_one(variant: str, seed: int, rounds: int) -> dict[str, Any]:
    """One run: overall and class-5 accuracy at each evaluated round, wall seconds."""
    overrides = [f"seed={seed}", f"rounds={rounds}", *VARIANTS[variant]]
    plan = ClassTrackingPlan.from_scenario(load_scenario("async-stale", overrides))
    _GI_POLICIES.clear()
    delayed = len(plan.timing().delayed_clients) if variant != "none" else 0
    t0 = time.perf_counter()
    res = run_engine("inprocess", plan)
    wall = time.perf_counter() - t0
    evaluated = [r for r in res.rounds if math.isfinite(r.accuracy)]
    return {"variant": variant, "seed": seed, "overrides": overrides, "wall_s": wall,
            "stale_updates": delayed * (rounds - 1), "rounds": [r.round for r in evaluated],
            "accuracy": [r.accuracy for r in evaluated], "class_accuracy": plan.class_curve,
            "gi_state": _GI_POLICIES[-1].state() if _GI_POLICIES else None}  # fmt: skip


def rounds_to(run: dict[str, Any], target: float) -> float:
    """First evaluated round whose overall accuracy reaches ``target`` (NaN if none)."""
    pairs = zip(run["rounds"], run["accuracy"], strict=True)
    return next((float(r) for r, a in pairs if a >= target), math.nan)


def _med(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if len(finite) * 2 > len(values) else math.nan


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: medians of final accuracy (overall, class 5), gains over direct, rounds to target."""
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    target = TARGET_SHARE * statistics.median(r["accuracy"][-1] for r in by["none"])
    direct_wall = statistics.median(r["wall_s"] for r in by["direct"])
    rows: dict[str, Any] = {}
    for v, rs in by.items():
        rows[v] = {
            "final_accuracy": statistics.median(r["accuracy"][-1] for r in rs),
            "final_class_accuracy": statistics.median(r["class_accuracy"][-1] for r in rs),
            "rounds_to_target": _med([rounds_to(r, target) for r in rs]),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
        }
    for v, row in rows.items():  # against direct on the same seeds (a variant may run fewer)
        seeds = {r["seed"] for r in by[v]}
        d = [r for r in by["direct"] if r["seed"] in seeds]
        row["gain_pts"] = 100 * (row["final_accuracy"] - statistics.median(r["accuracy"][-1] for r in d))
        row["class_gain_pts"] = 100 * (
            row["final_class_accuracy"] - statistics.median(r["class_accuracy"][-1] for r in d)
        )
        row["rounds_change"] = row["rounds_to_target"] / _med([rounds_to(r, target) for r in d]) - 1
        row["seeds"] = sorted(seeds)
    gi = by["gi"]
    converted = statistics.median((r["gi_state"] or {}).get("converted", 0) for r in gi)
    rows["gi"]["converted"] = converted
    rows["gi"]["stale_updates"] = statistics.median(r["stale_updates"] for r in gi)
    rows["gi"]["extra_s_per_conversion"] = (rows["gi"]["wall_s"] - direct_wall) / max(converted, 1)
    return {"target": target, "variants": rows}


def plot(runs: list[dict[str, Any]], path: Any) -> None:
    """Overall and class-5 accuracy per round (median over seeds), one line per variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for v in VARIANTS:
        rs = [r for r in runs if r["variant"] == v]
        x = rs[0]["rounds"]
        axes[0].plot(x, np.median([r["accuracy"] for r in rs], axis=0), label=v)
        axes[1].plot(x, np.median([r["class_accuracy"] for r in rs], axis=0), label=v)
    for ax, what in zip(axes, ("overall test accuracy", f"class-{DELAYED_CLASS} accuracy"), strict=True):
        ax.set(xlabel="round", ylabel=what, title=f"async-stale: {what}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = parser(__doc__, quick="1 seed, 8 rounds", out="async_stale.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--gi-seeds", type=int, default=3)
    args = p.parse_args()
    seeds, rounds = (1, 8) if args.quick else (args.seeds, args.rounds)
    torch.set_num_threads(1)
    prov = Provenance.capture()
    runs = []
    for seed in range(seeds):
        for v in VARIANTS:
            if v == "gi" and seed >= args.gi_seeds:
                continue
            runs.append(run_one(v, seed, rounds))
            r = runs[-1]
            print(f"  {v:8s} seed {seed}: acc {r['accuracy'][-1]:.3f}, class {DELAYED_CLASS} "
                  f"{r['class_accuracy'][-1]:.3f} ({r['wall_s']:.0f} s)", flush=True)  # fmt: skip
    s = summarize(runs)
    print(f"\ntarget {s['target']:.3f} (= {TARGET_SHARE:.0%} of the no-staleness final), {rounds} rounds")
    print("| variant | final acc | gain vs direct | class-5 acc | class-5 gain | rounds to target |")
    print("|---|---|---|---|---|---|")
    for v, m in s["variants"].items():
        print(
            f"| {v} | {m['final_accuracy']:.3f} | {m['gain_pts']:+.1f} pts | {m['final_class_accuracy']:.3f}"
            f" | {m['class_gain_pts']:+.1f} pts | {m['rounds_to_target']:.0f} ({m['rounds_change']:+.0%}) |"
        )
    g = s["variants"]["gi"]
    print(
        f"GI: {g['converted']:.0f} of {g['stale_updates']:.0f} stale updates converted (median), "
        f"{g['extra_s_per_conversion']:.2f} extra wall s per conversion"
    )
    out = out_path(args)
    plot(runs, out.with_suffix(".png"))
    prov.write(out, {"setting": {"seeds": seeds, "rounds": rounds, "variants": VARIANTS,
               "target_share": TARGET_SHARE}, "summary": s, "runs": runs})  # fmt: skip


if __name__ == "__main__":
    main()
