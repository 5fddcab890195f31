"""Privacy table: final test accuracy against the ε each DP mode reports, next to the non-private run.

For each dataset (digits, mnist1d) the same federation runs with ``privacy.mode=off`` (the anchor,
in the same run) and with each DP mode at each target ε (δ = 1e-5, ``calibration=target_epsilon``):

- ``central``: DP-FedAvg, user-level, Poisson-subsampled Gaussian RDP at q = per_round/num_clients,
  with Poisson client sampling (``clients.sampling = "auto"``: each client's own coin, the sampling the
  accountant analyses) and the fixed denominator q·N;
- ``central_fixed``: the same with the fixed-size cohort of ``per_round`` clients the engines drew
  before Poisson sampling (``clients.sampling = "fixed"``; ε is then not formally covered): the old
  figures, re-measured in the same run;
- ``local``: every client clips its whole update and adds Gaussian noise (sensitivity 2C);
- ``dp_sgd``: opacus DP-SGD in every client (example-level; ε = the worst client's);
- ``rqm``: the Randomized Quantization Mechanism codec (its own exact RDP accountant), reported with
  its bits per coordinate measured from the bytes really sent.

Every run goes through ``load_scenario("smoke", overrides) -> SimulationPlan.from_scenario ->
run_engine("inprocess", plan)``; a mode the engines do not run yet is listed as "not wired". Accuracy
is the median over ``--seeds`` seeds; the reported ε is the last round's ``epsilon`` of the run.

Every run sets ``privacy.noise=seeded``: the noise, the Poisson cohorts, RQM's rounding and DP-SGD's
batches come from the run seed, so the published table replays bit for bit (and the clients asked
can be counted from the plan). The noise has the same distribution as under the default
``"secret"`` source, so the accuracies measure the same mechanisms; only the guarantee against
someone who knows the seed is absent, which a benchmark does not need.

Regenerate::

    .venv/bin/python benchmarks/bench_privacy.py            # both datasets, ε in {1, 2, 4, 8}, 2 seeds
    .venv/bin/python benchmarks/bench_privacy.py --quick    # digits, ε in {1, 8}, 1 seed, 10 rounds
    .venv/bin/python benchmarks/bench_privacy.py --modes central central_fixed \
        --out benchmarks/results/privacy_central_sampling.json   # Poisson vs fixed-size, side by side

Prints a markdown table and writes ``benchmarks/results/privacy.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch
from _provenance import Provenance, out_path, parser

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.models import build_model
from stamen.task.weights import get_weights

MODES = ("central", "central_fixed", "local", "dp_sgd", "rqm")
EPSILONS = (1.0, 2.0, 4.0, 8.0)
DELTA = 1e-5
# One federation for every mode: 50 IID clients, 25 per round (q = 0.5), 30 rounds, mean rule.
COMMON = [
    "data.partition=iid",
    "data.num_clients=50",
    "clients.per_round=25",
    "rounds=30",
    "clients.local_epochs=1",
    "clients.batch_size=16",
    "clients.lr=0.3",
    "aggregation.rule=mean",
    "privacy.noise=seeded",  # reproducible figures (module docstring)
    "eval.every=1",
]
# Update clip C for central/local: about the median L2 norm of a round-1 non-private update in a pilot
# (digits 0.27, mnist1d 0.85); DP-SGD clips per-example gradients at 1.0 (opacus' usual default).
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"overrides": ["data.dataset=digits", "model.hidden=32"], "update_clip": 0.3},
    "mnist1d": {"overrides": ["data.dataset=mnist1d", "model.hidden=64"], "update_clip": 1.0},
}
MODE_OVERRIDES: dict[str, list[str]] = {
    "off": ["privacy.mode=off"],
    "central": ["privacy.mode=central"],  # clients.sampling=auto: Poisson
    "central_fixed": ["privacy.mode=central", "clients.sampling=fixed"],
    "local": ["privacy.mode=local"],
    "dp_sgd": ["privacy.mode=dp_sgd", "clients.trainer=dp_sgd", "privacy.clipping_norm=1.0"],
    "rqm": ["privacy.mode=rqm", "codec.pipeline=rqm"],
}


def overrides_for(dataset: str, mode: str, eps: float | None, seed: int, quick: bool) -> list[str]:
    """The ``--set`` list of one run."""
    out = [*COMMON, *DATASETS[dataset]["overrides"], f"seed={seed}"]
    out.append(f"privacy.clipping_norm={DATASETS[dataset]['update_clip']}")
    out += MODE_OVERRIDES[mode]  # later entries win (dp_sgd's own clip)
    if eps is not None:
        out += ["privacy.calibration=target_epsilon", f"privacy.target_epsilon={eps}"]
        out.append(f"privacy.delta={DELTA}")
    if quick:
        out.append("rounds=10")
    return out


def run_one(dataset: str, mode: str, eps: float | None, seed: int, quick: bool) -> dict[str, Any]:
    """One federation; ``status`` is ``ok``, ``not wired`` or ``error: ...``."""
    row: dict[str, Any] = {"dataset": dataset, "mode": mode, "target_epsilon": eps, "seed": seed}
    try:
        scenario = load_scenario("smoke", overrides_for(dataset, mode, eps, seed, quick))
        plan = SimulationPlan.from_scenario(scenario)
    except ValueError as exc:
        row["status"] = "not wired" if "not available yet" in str(exc) else f"error: {exc}"
        return row
    start = time.perf_counter()
    try:
        result = run_engine("inprocess", plan)
    except ValueError as exc:
        row["status"] = f"error: {exc}"
        return row
    rounds = result.rounds
    evaluated = [r for r in rounds if not math.isnan(r.accuracy)]
    cfg = plan.cfg
    sent = sum(len(plan.cohort(r.round)) for r in rounds)  # the clients asked (all reply in-process)
    dim = sum(v.size for v in get_weights(build_model(cfg.task)).values())
    row.update(
        status="ok",
        wall_s=time.perf_counter() - start,
        rounds=len(rounds),
        accuracy=evaluated[-1].accuracy if evaluated else math.nan,
        epsilon=rounds[-1].epsilon if rounds else None,
        params=dim,
        # per update sent: a Poisson cohort's size varies round to round
        bits_per_coordinate=8.0 * sum(r.bytes_up for r in rounds) / (sent * dim) if sent else math.nan,
        mean_cohort=sent / len(rounds) if rounds else math.nan,
        privacy=plan.result_extra().get("privacy"),  # sampling scheme and what the accountant assumes
    )
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over seeds per (dataset, mode, target ε); accuracy also relative to ``off``."""
    groups: dict[tuple[str, str, float | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["mode"], r["target_epsilon"]), []).append(r)
    anchor = {
        k[0]: statistics.median(x["accuracy"] for x in g)
        for k, g in groups.items()
        if k[1] == "off" and all(x["status"] == "ok" for x in g)
    }
    out = []
    for (ds, mode, eps), g in groups.items():
        ok = [x for x in g if x["status"] == "ok"]
        s: dict[str, Any] = {
            "dataset": ds,
            "mode": mode,
            "target_epsilon": eps,
            "seeds": len(g),
            "status": "ok" if len(ok) == len(g) else g[0]["status"],
        }
        if ok:
            acc = statistics.median(x["accuracy"] for x in ok)
            eps_rep = [x["epsilon"] for x in ok if x["epsilon"] is not None]
            s.update(
                accuracy=acc,
                accuracy_vs_off=acc / anchor[ds] if anchor.get(ds) else math.nan,
                epsilon=max(eps_rep) if eps_rep else None,
                bits_per_coordinate=statistics.median(x["bits_per_coordinate"] for x in ok),
                wall_s=statistics.median(x["wall_s"] for x in ok),
            )
        out.append(s)
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| dataset | mode | target ε | reported ε | final accuracy | / non-private | bits/coord | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        target = "—" if s["target_epsilon"] is None else f"{s['target_epsilon']:g}"
        if s["status"] != "ok":
            lines.append(f"| {s['dataset']} | {s['mode']} | {target} | {s['status']} | | | | |")
            continue
        eps = "—" if s["epsilon"] is None else f"{s['epsilon']:.3g}"
        lines.append(
            f"| {s['dataset']} | {s['mode']} | {target} | {eps} | {s['accuracy']:.3f} "
            f"| {s['accuracy_vs_off']:.2f} | {s['bits_per_coordinate']:.2f} | {s['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the grid for a smoke run."""
    p = parser(__doc__, quick="digits only, ε in {1, 8}, 1 seed, 10 rounds", out="privacy.json")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS))
    p.add_argument("--seeds", type=int, default=2, help="seeds per setting (accuracy is the median)")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.epsilons, args.seeds = ["digits"], [1.0, 8.0], 1
    if args.seeds < 1 or any(not e > 0 for e in args.epsilons):
        p.error("--seeds must be >= 1 and every epsilon > 0")
    return args


def main() -> None:
    args = parse_args()
    prov = Provenance.capture()
    torch.set_num_threads(1)
    grid = [(ds, "off", None) for ds in args.datasets]
    grid += [(ds, m, e) for ds in args.datasets for m in args.modes for e in args.epsilons]
    rows = []
    for ds, mode, eps in grid:
        for seed in range(args.seeds):
            rows.append(run_one(ds, mode, eps, seed, args.quick))
            r = rows[-1]
            print(
                f"  {ds:8s} {mode:8s} ε={eps} seed={seed}: {r['status']} "
                f"acc={r.get('accuracy', float('nan')):.3f} eps={r.get('epsilon')}",
                flush=True,
            )
    summary = summarize(rows)
    print(markdown(summary))
    config = {
        "common": COMMON,
        "datasets": DATASETS,
        "modes": MODE_OVERRIDES,
        "delta": DELTA,
        "seeds": args.seeds,
        "quick": args.quick,
        "engine": "inprocess",
        "base_scenario": "smoke",
    }
    prov.write(out_path(args), {"config": config, "summary": summary, "runs": rows})


if __name__ == "__main__":
    main()
