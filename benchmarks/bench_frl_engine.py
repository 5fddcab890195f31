"""FRL under 20 % rank reversal through the engine (faithful attacker pool), several seeds.

The built-in ``frl`` scenario (digits, 50 clients with Dirichlet(1.0) label skew, 25 per round,
supermask MLP 64-128-128-10, 2 local epochs, batch 8, lr 0.4 x 0.999^round) run by the
``inprocess`` engine, clean and with ``attack.kind=rank_reversal attack.fraction=0.2`` (10
attackers drawn from the seed). Every round the adversary trains min(10, 25) = all 10 malicious
partitions from the global model, pools their rankings and every sampled attacker submits the
reversed combined ranking (``FL_train.py`` of SPIN-UMass/FRL); cohorts are redrawn until the
attackers are a minority (never needed here: at most 10 of 25). Anchor: the paper's claim that FRL
loses <= 2 points at 20 % rank reversal; we print final and best (the code reports best) accuracy.
Regenerate::

    .venv/bin/python benchmarks/bench_frl_engine.py --jobs 2            # 6 runs, 100 rounds
    .venv/bin/python benchmarks/bench_frl_engine.py --quick             # 1 seed, 8 rounds

Writes ``benchmarks/results/frl_engine[_quick].json``.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from _provenance import Provenance, out_path, parser

ATTACKS: dict[str, tuple[str, ...]] = {
    "clean": (),
    "rank_reversal_20pct": ("attack.kind=rank_reversal", "attack.fraction=0.2"),
}
PAPER_MAX_LOSS = 2.0  # points, FRL at 20 % rank reversal (the reading of the paper)


def run_one(job: tuple[str, int, int]) -> dict[str, Any]:
    """One ``frl`` run; final and best accuracy over the rounds. Never raises (errors recorded)."""
    from stamen.server.config import ServerConfig
    from stamen.simulations.engines import run_engine
    from stamen.simulations.scenario import load_scenario

    attack, seed, rounds = job
    overrides = [*ATTACKS[attack], f"seed={seed}", f"rounds={rounds}"]
    row: dict[str, Any] = {"attack": attack, "seed": seed, "rounds": rounds, "overrides": overrides}
    t0 = time.perf_counter()
    try:
        result = run_engine("inprocess", ServerConfig.from_scenario(load_scenario("frl", overrides)))
        accs = [r.accuracy for r in result.rounds]
        row |= {
            "final": float(accs[-1]),
            "best": float(max(accs)),
            "rejected": sum(r.rejected for r in result.rounds),
        }
    except Exception as exc:  # one bad run must not stop the others
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["wall_s"] = time.perf_counter() - t0
    return row


def loss_points(runs: list[dict[str, Any]], key: str) -> list[float]:
    """Per seed: (clean - attacked) accuracy in points, for the seeds with both runs finished."""
    by = {(r["attack"], r["seed"]): r[key] for r in runs if key in r}
    seeds = sorted({s for (_, s) in by})
    return [
        100 * (by[("clean", s)] - by[("rank_reversal_20pct", s)])
        for s in seeds
        if ("clean", s) in by and ("rank_reversal_20pct", s) in by
    ]


def report(runs: list[dict[str, Any]]) -> str:
    """Per-seed accuracies and the loss in points, median over seeds, next to the paper's bound."""
    lines = ["| run | seed | final | best |", "|---|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (r["attack"], r["seed"])):
        if "final" in r:
            lines.append(f"| {r['attack']} | {r['seed']} | {r['final']:.4f} | {r['best']:.4f} |")
    for key in ("final", "best"):
        pts = loss_points(runs, key)
        if pts:
            lines.append(
                f"\nloss at 20 % rank reversal ({key}): median {statistics.median(pts):.1f} points "
                f"(per seed {', '.join(f'{p:.1f}' for p in pts)}); paper: <= {PAPER_MAX_LOSS:g}"
            )
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, quick="one seed, 8 rounds", out="frl_engine.json")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    a = p.parse_args()
    prov = Provenance.capture()
    seeds, rounds = ([0], 8) if a.quick else ([int(s) for s in a.seeds.split(",")], a.rounds)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the spawned workers
    jobs = [(x, s, rounds) for s in seeds for x in ATTACKS]
    print(f"{len(jobs)} runs, {a.jobs} process(es)", flush=True)
    runs = []
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        for i, row in enumerate(pool.map(run_one, jobs), 1):
            runs.append(row)
            acc = f"{row['final']:.4f} / {row['best']:.4f}" if "final" in row else row["error"][:80]
            print(
                f"[{i}/{len(jobs)}] {row['attack']} seed {row['seed']}: {acc} ({row['wall_s']:.0f} s)",
                flush=True,
            )
    text = report(runs)
    print("\n" + text)
    meta = {"jobs": a.jobs, "seeds": seeds, "rounds": rounds, "table": text}
    prov.write(out_path(a), {"setting": meta, "runs": runs})


if __name__ == "__main__":
    main()
