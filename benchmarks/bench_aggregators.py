"""Aggregator speed: every robust rule on an ``(n, d)`` float32 stack next to Flower 1.41's own.

Anchors measured in the same run:

* Flower 1.41's ``flwr.server.strategy.aggregate`` functions on the same rows (``aggregate_median``,
  ``aggregate_trimmed_avg``, ``aggregate_krum`` for Krum and Multi-Krum, ``aggregate_bulyan`` over
  ``aggregate_krum``, and ``aggregate`` for the weighted mean), fed as Flower feeds them: a list of
  ``([row], num_examples)`` pairs (views, no copy). The outputs are compared too (max abs difference).
* a plain copy of the stack (``updates.copy()``): the floor any rule that reads the stack pays.

Defaults: ``n = 50, d = 10^6`` (200 MB), ``f = 5`` assumed attackers (10 %), trimmed-mean
``beta = 0.1``, Multi-Krum keeps ``n - f``; then the large-cohort case ``n = 1000, d = 10^5`` (400 MB,
``f = 100``) for our rules (Flower's median / trimmed mean as anchors there; its Krum and Bulyan would
take minutes). Median of ``--repeats`` timed calls after a warm-up (Flower's Krum/Bulyan: fewer,
they take seconds to minutes). One BLAS thread by default (``--threads``), so both sides run on one core.

Regenerate::

    .venv/bin/python benchmarks/bench_aggregators.py            # ~5 min, mostly Flower's Bulyan
    .venv/bin/python benchmarks/bench_aggregators.py --quick    # d = 10^5, seconds

Writes ``benchmarks/results/aggregators.json`` (``aggregators_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv() -> str:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads_from_argv())  # before numpy loads BLAS

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _provenance import Provenance, out_path, parser  # noqa: E402

from stamen.server.aggregators import build_aggregator, create, create_pre  # noqa: E402


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call unless ``warmup`` is False)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flower_functions(f: int, beta: float, m: int) -> dict[str, Callable[[list[Any]], Any]]:
    """Flower 1.41's built-in equivalent of each rule, on Flower's ``[(NDArrays, num_examples)]``."""
    from flwr.server.strategy import aggregate as fa

    return {
        "fedavg": lambda res: fa.aggregate(res),
        "median": lambda res: fa.aggregate_median(res),
        "trimmed_mean": lambda res: fa.aggregate_trimmed_avg(res, beta),
        "krum": lambda res: fa.aggregate_krum(res, f, 0),
        "multikrum": lambda res: fa.aggregate_krum(res, f, m),
        # aggregate_bulyan pops from its list: give it a fresh one
        "bulyan": lambda res: fa.aggregate_bulyan(list(res), f, fa.aggregate_krum, to_keep=0),
    }


def our_rules(f: int, beta: float) -> dict[str, Callable[[np.ndarray, np.ndarray], Any]]:
    """Our aggregators with the same parameters (plus the rules Flower does not have); the two
    pre-aggregators are also timed alone (their ``(stack, weights)`` output, no rule after them)."""
    return {
        "fedavg": create("fedavg"),
        "median": create("median"),
        "trimmed_mean": create("trimmed_mean", beta=beta),
        "krum": create("krum", assumed_byzantine=f),
        "multikrum": create("multikrum", assumed_byzantine=f),
        "bulyan": create("bulyan", assumed_byzantine=f),
        "geomed": create("geomed"),
        "centered_clipping": create("centered_clipping", tau=10.0),
        "nnm+trimmed_mean": build_aggregator("trimmed_mean", ["nnm"], {"beta": beta, "assumed_byzantine": f}),
        "bucketing+median": build_aggregator("median", ["bucketing"], {"bucket_size": 2}),
        "nnm (stage alone)": create_pre("nnm", assumed_byzantine=f),
        "bucketing (stage)": create_pre("bucketing", bucket_size=2),
    }


def flower_repeats(rule: str, d: int, repeats: int) -> int:
    """Flower's Krum takes seconds and its Bulyan about a minute at d = 10^6: fewer repeats."""
    if rule == "bulyan":
        return 1
    if rule in ("krum", "multikrum"):
        return max(1, min(repeats, 3 if d >= 500_000 else repeats))
    return repeats


def bench_case(n: int, d: int, f: int, beta: float, repeats: int, flower_rules: set[str]) -> dict[str, Any]:
    """Time every rule (ours, and Flower's where listed) on one random ``(n, d)`` stack."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = np.full(n, 100.0)  # equal sample counts: Flower's weighted Multi-Krum then equals the paper's mean
    results = [([row], int(k)) for row, k in zip(x, w, strict=True)]  # Flower's input, views of x
    copy_s = median_seconds(lambda: x.copy(), repeats)
    flower = flower_functions(f, beta, n - f)
    rows = []
    for name, agg in our_rules(f, beta).items():
        ours_s = median_seconds(partial(agg, x, w), repeats)
        row: dict[str, Any] = {"rule": name, "ours_s": ours_s, "ours_over_copy": ours_s / copy_s}
        if name in flower and name in flower_rules:
            fn = flower[name]
            reps = flower_repeats(name, d, repeats)
            flower_out: list[Any] = []

            def call_flower(fn: Callable[[list[Any]], Any] = fn, sink: list[Any] = flower_out) -> None:
                sink.append(fn(results))

            row["flower_s"] = median_seconds(call_flower, reps, warmup=False)
            row["speedup"] = row["flower_s"] / ours_s
            row["max_abs_diff_vs_flower"] = float(np.max(np.abs(agg(x, w) - flower_out[-1][0])))
        rows.append(row)
        print(fmt_row(row), flush=True)
    return {"n": n, "d": d, "f": f, "beta": beta, "copy_s": copy_s, "rules": rows}


def fmt_row(r: dict[str, Any]) -> str:
    flower = f"{r['flower_s'] * 1e3:10.1f}" if "flower_s" in r else f"{'—':>10}"
    speed = f"{r['speedup']:8.1f}×" if "speedup" in r else f"{'—':>9}"
    diff = f"{r['max_abs_diff_vs_flower']:.1e}" if "max_abs_diff_vs_flower" in r else "—"
    ours = f"{r['ours_s'] * 1e3:9.1f}"
    return f"| {r['rule']:<18} | {ours} | {flower} | {speed} | {r['ours_over_copy']:6.1f}× | {diff} |"


def markdown(case: dict[str, Any]) -> str:
    """One case as a markdown table."""
    head = (
        f"\n**n = {case['n']}, d = {case['d']:,}** (float32, {case['n'] * case['d'] * 4 / 1e6:.0f} MB; "
        f"f = {case['f']}, beta = {case['beta']}; plain copy of the stack: {case['copy_s'] * 1e3:.1f} ms)\n\n"
        "| rule | ours (ms) | Flower 1.41 (ms) | speed-up | ours / copy | max abs diff vs Flower |\n"
        "|---|---:|---:|---:|---:|---|"
    )
    return "\n".join([head, *(fmt_row(r) for r in case["rules"])])


def main() -> None:
    p = parser(__doc__, quick="n=50, d=10^5 and n=200, d=10^4; 3 repeats", out="aggregators.json")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", default="1", help="BLAS threads (OPENBLAS_NUM_THREADS), default 1")
    a = p.parse_args()
    prov = Provenance.capture()
    cases = [
        (50, 10**6, 5, 0.1, set(flower_functions(0, 0.1, 1))),
        (1000, 10**5, 100, 0.1, {"fedavg", "median", "trimmed_mean"}),
    ]
    repeats = a.repeats
    if a.quick:
        cases = [
            (50, 10**5, 5, 0.1, set(flower_functions(0, 0.1, 1))),
            (200, 10**4, 20, 0.1, {"fedavg", "median", "trimmed_mean"}),
        ]
        repeats = 3
    out: dict[str, Any] = {
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "repeats": repeats,
        "cases": [],
    }
    for n, d, f, beta, flower_rules in cases:
        print(
            markdown({"n": n, "d": d, "f": f, "beta": beta, "copy_s": float("nan"), "rules": []}), flush=True
        )
        out["cases"].append(bench_case(n, d, f, beta, repeats, flower_rules))
    print("\n".join(markdown(c) for c in out["cases"]))
    prov.write(out_path(a), out)


if __name__ == "__main__":
    main()
