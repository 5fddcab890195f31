"""Bristle's own setting: ``bristle`` (server mode) against FLTrust, median, Krum, trimmed mean, FedAvg.

The built-in ``bristle`` scenario (the paper's smallest setting analogue): mnist1d, nodes holding
4 label shards each (a few classes), all nodes every round, 40 rounds, 30 % attackers. Every rule
aggregates the same trainable output layer on the same frozen mnist1d-letters feature extractor
(``bristle_transfer``; Adam lr 1e-3, L2 5e-3, batch 5, one epoch). ``bristle`` clients use the
``bristle`` trainer (only their own classes' rows, the code's ``updateCW``); the baselines use the
plain ``full`` trainer (the whole layer's delta), as federated baselines do.

**What each rule knows** (the comparison is only fair between rules that know the same): Bristle's
server mode holds a clean, labelled, all-class validation slice of 100 samples (10 per class,
``validation_slice``) and reads each client's class count from its update. **FLTrust** (Cao et al.,
NDSS 2021) is the baseline that uses the *same* 100 samples as its root dataset: each round the
server trains the global layer on them with the clients' optimizer and number of local steps,
giving ``g_0``, and averages the clients' updates rescaled to ``||g_0||`` with weights
``ReLU(cos(g_i, g_0))``. Median, Krum and trimmed mean see only the updates (Krum and trimmed mean
also the assumed number of attackers: Krum ``f`` = the actual count, as far as ``2f + 3 <= n``
allows; trimmed mean ``β = 0.3``); FedAvg the updates and the reported sample counts.

Two settings: ``10 nodes`` (the scenario as built in; Bristle's prioritizer keeps 20 closest + 5
random peers, so with 10 it filters nothing) and ``40 nodes`` (``data.num_clients = 40``: the
prioritizer keeps 25 of 40 every round). Attacks: ``label_flip`` (all classes, data), ``gaussian``
(N(0, 1) rows, "noise"), ``alie`` (omniscient). Anchor, the paper (arXiv 2110.11006, abstract):
Bristle holds a consistent 95 % accuracy in Byzantine environments on MNIST and beats the most
Byzantine-resilient baselines by 2.3x with non-i.i.d. classes; printed next to our ratios.
Regenerate::

    .venv/bin/python benchmarks/bench_bristle_setting.py --jobs 2          # 144 runs, seeds 0,1,2
    .venv/bin/python benchmarks/bench_bristle_setting.py --resume --jobs 2 # keep finished runs
    .venv/bin/python benchmarks/bench_bristle_setting.py --quick           # 1 seed, 8 rounds

Writes ``benchmarks/results/bristle_setting[_quick].json`` (every run) and ``..._setting.png``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from _provenance import Provenance, out_path, parser

FULL = ("clients.trainer=full",)  # the baselines send their whole output-layer delta
#: per setting: its overrides, the attackers Krum may assume, FLTrust's root steps (= client steps)
SETTINGS: dict[str, dict[str, Any]] = {
    "10 nodes": {"overrides": (), "krum_f": 3, "client_steps": 80},  # 400 samples / batch 5
    "40 nodes": {
        "overrides": ("data.num_clients=40", "clients.per_round=40"),
        "krum_f": 12,
        "client_steps": 20,
    },
}
RULES: dict[str, tuple[str, ...]] = {
    "bristle": ("aggregation.rule=bristle",),
    "fltrust": ("aggregation.rule=fltrust", *FULL),
    "median": ("aggregation.rule=median", *FULL),
    "krum": ("aggregation.rule=krum", *FULL),
    "trimmed_mean": ("aggregation.rule=trimmed_mean", "aggregation.beta=0.3", *FULL),
    "fedavg": ("aggregation.rule=fedavg", *FULL),
}
USES: dict[str, str] = {
    "bristle": "100 clean labelled server samples (all classes) + clients' class counts",
    "fltrust": "the same 100 clean labelled server samples (root data)",
    "median": "updates only",
    "krum": "updates + assumed attacker count f",
    "trimmed_mean": "updates + assumed trimmed share β = 0.3",
    "fedavg": "updates + reported sample counts",
}
ATTACKS: dict[str, tuple[str, ...]] = {
    "clean": ("attack.kind=none", "attack.fraction=0"),
    "label_flip": ("attack.kind=label_flip", "attack.fraction=0.3"),
    "gaussian": ("attack.kind=gaussian", "attack.fraction=0.3"),
    "alie": ("attack.kind=alie", "attack.fraction=0.3"),
}
ROBUST = ("median", "krum", "trimmed_mean")  # robust rules that use no clean data
PAPER_RATIO = 2.3  # "outperforms the most Byzantine-resilient baselines by 2.3x" (non-iid classes)
PAPER_ACCURACY = 0.95  # "consistent 95% accuracy in Byzantine environments" (MNIST)

Job = tuple[str, str, str, int, int]  # setting, rule, attack, seed, rounds


def overrides(setting: str, rule: str, attack: str, seed: int, rounds: int) -> list[str]:
    """Scenario overrides of one run (the setting's, the rule's, the attack's, seed and rounds)."""
    s = SETTINGS[setting]
    extra = {
        "krum": (f"aggregation.assumed_byzantine={s['krum_f']}",),
        "fltrust": (f"aggregation.root_steps={s['client_steps']}",),
    }.get(rule, ())
    run = (f"seed={seed}", f"rounds={rounds}", f"eval.every={rounds}")
    return [*s["overrides"], *RULES[rule], *extra, *ATTACKS[attack], *run]


def run_one(job: Job) -> dict[str, Any]:
    """One run of the ``bristle`` scenario; never raises (errors are recorded)."""
    from stamen.server.config import ServerConfig
    from stamen.simulations.engines import run_engine
    from stamen.simulations.scenario import load_scenario

    setting, rule, attack, seed, rounds = job
    args = overrides(*job)
    row: dict[str, Any] = {"setting": setting, "rule": rule, "attack": attack, "seed": seed, "rounds": rounds}
    row["overrides"] = args
    t0 = time.perf_counter()
    try:
        result = run_engine("inprocess", ServerConfig.from_scenario(load_scenario("bristle", args)))
        row["accuracy"] = float(result.rounds[-1].accuracy)
    except Exception as exc:  # one bad run must not stop the others
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["wall_s"] = time.perf_counter() - t0
    return row


def key(row: dict[str, Any]) -> tuple[str, str, str, int, int]:
    """Identity of a run (a finished run with this key is reused by ``--resume``)."""
    return (row.get("setting", "10 nodes"), row["rule"], row["attack"], int(row["seed"]), int(row["rounds"]))


def summary(runs: list[dict[str, Any]], setting: str, rule: str, attack: str) -> tuple[float, float, float]:
    """(median, min, max) final accuracy over the seeds; NaNs if none finished."""
    mine = (r for r in runs if key(r)[:3] == (setting, rule, attack))
    accs = sorted(r["accuracy"] for r in mine if "accuracy" in r)
    return (statistics.median(accs), accs[0], accs[-1]) if accs else (math.nan,) * 3


def _ratio_row(runs: list[dict[str, Any]], setting: str, name: str, others: tuple[str, ...]) -> str:
    ratios = [
        summary(runs, setting, "bristle", a)[0] / max(summary(runs, setting, r, a)[0] for r in others)
        for a in ATTACKS
    ]
    return f"| bristle / best of {name} | | " + " | ".join(f"{x:.2f}×" for x in ratios) + " |"


def table(runs: list[dict[str, Any]], seeds: list[int], setting: str) -> str:
    """Markdown for one setting: rules x attacks, median (min–max) over the seeds, what each rule
    uses, and Bristle's ratio to the rules without clean data and to FLTrust (same clean data)."""
    lines = [
        f"**{setting}** — final test accuracy, median (min–max) over seeds {seeds}",
        "",
        "| rule | uses | " + " | ".join(ATTACKS) + " |",
        "|---|---|" + "---:|" * len(ATTACKS),
    ]
    for rule in RULES:
        cells = [summary(runs, setting, rule, a) for a in ATTACKS]
        text = " | ".join(f"{m:.3f} ({lo:.2f}–{hi:.2f})" for m, lo, hi in cells)
        lines.append(f"| {rule} | {USES[rule]} | {text} |")
    lines.append(_ratio_row(runs, setting, "median, krum, trimmed mean (no clean data)", ROBUST))
    lines.append(_ratio_row(runs, setting, "fltrust (same clean data)", ("fltrust",)))
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, settings: list[str]) -> None:
    """Grouped bars (median) with min–max whiskers per setting: attacks on x, one bar per rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(7.5 * len(settings), 3.8), squeeze=False)
    width = 0.8 / len(RULES)
    for ax, setting in zip(axes[0], settings, strict=True):
        for i, rule in enumerate(RULES):
            stats = [summary(runs, setting, rule, a) for a in ATTACKS]
            xs = [j + (i - (len(RULES) - 1) / 2) * width for j in range(len(ATTACKS))]
            err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
            ax.bar(xs, [s[0] for s in stats], width, yerr=err, capsize=2, label=rule)
        ax.set_xticks(range(len(ATTACKS)), list(ATTACKS))
        ax.set(ylabel="final test accuracy", ylim=(0, 1), title=f"Bristle setting, {setting}, 30 % attackers")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _previous(path: Path, resume: bool) -> dict[tuple[str, str, str, int, int], dict[str, Any]]:
    if not resume or not path.is_file():
        return {}
    return {key(r): r for r in json.loads(path.read_text())["runs"] if "accuracy" in r}


def main() -> None:
    p = parser(__doc__, quick="one seed, 8 rounds", out="bristle_setting.json")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=40, help="the bristle scenario's 40 by default")
    p.add_argument(
        "--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS)
    )
    p.add_argument("--rules", default=",".join(RULES), help="comma-separated subset of the rules")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--resume", action="store_true", help="keep finished runs of the results file")
    a = p.parse_args()
    prov = Provenance.capture()
    seeds, rounds = ([0], 8) if a.quick else ([int(s) for s in a.seeds.split(",")], a.rounds)
    settings, rules = a.settings.split(","), a.rules.split(",")
    path = out_path(a)
    done = _previous(path, a.resume)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the spawned workers
    jobs = [(st, r, x, s, rounds) for st in settings for s in seeds for r in rules for x in ATTACKS]
    todo = [j for j in jobs if j not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} kept, {a.jobs} process(es)", flush=True)
    runs = list(done.values())  # --resume keeps every finished run of the file, also other settings'
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        for i, row in enumerate(pool.map(run_one, todo), 1):
            runs.append({**row, "commit": prov.commit, "dirty": prov.dirty})  # --resume mixes runs
            acc = f"{row['accuracy']:.3f}" if "accuracy" in row else row["error"][:80]
            print(f"[{i}/{len(todo)}] {key(row)}: {acc} ({row['wall_s']:.0f} s)", flush=True)
            prov.write(path, {"setting": {"seeds": seeds, "rounds": rounds}, "runs": runs}, quiet=True)
    shown = [r for r in runs if r["rounds"] == rounds and r["seed"] in seeds]
    present = [st for st in SETTINGS if any(key(r)[0] == st for r in shown)]
    text = "\n\n".join(table(shown, seeds, st) for st in present)
    text += (
        f"\n\nanchor (paper, MNIST): Bristle {PAPER_ACCURACY:.0%} under attack, "
        f"{PAPER_RATIO}x the most Byzantine-resilient baselines with non-iid classes"
    )
    print("\n" + text)
    meta = {"seeds": seeds, "rounds": rounds, "jobs": a.jobs, "uses": USES, "table": text}
    prov.write(path, {"setting": meta, "runs": runs})
    plot(shown, path.with_suffix(".png"), present)


if __name__ == "__main__":
    main()
