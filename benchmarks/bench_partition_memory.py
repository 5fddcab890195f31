"""Peak RSS of partitioning mnist1d for 1k / 10k / 100k clients and drawing 1000 clients' data.

Each measurement is a fresh Python process (numpy and stamen's data/partition modules only, no
torch): load the cached mnist1d pool (250,000 samples, 200,000 train -- the same pool for every
client count, so only the partitioning changes), build the partitioning, then draw 1000 random
clients' ``(x, y)`` one after the other (gathered, summed, dropped: what an engine round does).
``lazy`` is :func:`stamen.simulations.partition.build_partitioning` (index views);
the anchor ``eager``, measured in the same run, is the list of one array per client that
``partition()`` returns and ``client/task.py`` caches today. The peak is the process's peak RSS over
building and drawing (the kernel's high-water mark is reset after the pool is loaded, whose own
transient would hide everything else; ``base`` is the RSS at that point, pool included). Goal: lazy
peak RSS flat (within 10 %) from 1k to 100k clients.

    .venv/bin/python benchmarks/bench_partition_memory.py            # iid and shards, 1k/10k/100k

The first run generates the pool into the data cache (about 4 minutes on an idle core).
Writes benchmarks/results/partition_memory.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import out_path, parser, provenance

RESULTS = Path(__file__).resolve().parent / "results"
POOL = 250_000
DRAWN = 1000


def _reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    """Peak RSS since the last reset (``VmHWM``), else since the process started (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(clients: int, scheme: str, mode: str) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    import numpy as np

    from stamen.simulations.data import load_dataset
    from stamen.simulations.partition import build_partitioning, partition

    ds = load_dataset("mnist1d", seed=0, num_samples=POOL)
    gc.collect()
    reset = _reset_peak()  # the pool's load has a transient peak of its own: measure from here
    base = _peak_mib()
    t0 = time.perf_counter()
    kw = {"seed": 0, "shards_per_client": 2}
    if mode == "lazy":
        parts = build_partitioning(ds.y_train, clients, scheme, **kw)
        indices = parts.indices
    else:
        eager = partition(ds.y_train, clients, scheme, **kw)
        indices = eager.__getitem__
    built = time.perf_counter() - t0
    total = 0.0
    for pid in np.random.default_rng(1).choice(clients, DRAWN, replace=False):
        idx = indices(int(pid))
        total += float(ds.x_train[idx].sum()) + float(ds.y_train[idx].sum())
    drawn = time.perf_counter() - t0 - built
    return {
        "base_mib": base,
        "peak_mib": _peak_mib(),
        "peak_reset": reset,
        "build_s": built,
        "draw_s": drawn,
        "checksum": total,
    }


def measure(clients: int, scheme: str, mode: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(clients), scheme, mode]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, out="partition_memory.json")
    ap.add_argument("--clients", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--schemes", nargs="+", default=["iid", "shards"])
    ap.add_argument("--child", nargs=3, metavar=("CLIENTS", "SCHEME", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.child[2])))
        return 0
    prov = provenance()
    measure(1000, "iid", "lazy")  # generates the pool into the cache once (not measured)
    rows = [
        {"clients": k, "scheme": s, "mode": m, **measure(k, s, m)}
        for s in args.schemes
        for k in args.clients
        for m in ("lazy", "eager")
    ]
    flat = {
        s: max(r["peak_mib"] for r in rows if r["scheme"] == s and r["mode"] == "lazy")
        / min(r["peak_mib"] for r in rows if r["scheme"] == s and r["mode"] == "lazy")
        for s in args.schemes
    }
    result = {
        "pool_samples": POOL,
        "drawn_clients": DRAWN,
        "rows": rows,
        "lazy_peak_max_over_min": flat,
        "provenance": prov,
    }
    path = out_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return 0


def _print(result: dict) -> None:
    load = result["provenance"]["machine"]["load_average_1min"]
    print(f"1-min load average at start {load:.1f}; pool {result['pool_samples']} samples")
    print(
        "| scheme | clients | base MiB | lazy peak MiB | eager (anchor) peak MiB | lazy build s "
        "| eager build s |"
    )
    print("|---|---|---|---|---|---|---|")
    by = {(r["scheme"], r["clients"], r["mode"]): r for r in result["rows"]}
    for s, k, _ in sorted({(r["scheme"], r["clients"], 0) for r in result["rows"]}):
        lazy, eager = by[(s, k, "lazy")], by[(s, k, "eager")]
        print(
            f"| {s} | {k} | {lazy['base_mib']:.1f} | {lazy['peak_mib']:.1f} | {eager['peak_mib']:.1f} | "
            f"{lazy['build_s']:.3f} | {eager['build_s']:.3f} |"
        )
    for s, ratio in result["lazy_peak_max_over_min"].items():
        print(f"{s}: lazy peak RSS max/min over client counts = {ratio:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    sys.exit(main())
