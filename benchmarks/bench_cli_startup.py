"""CLI start-up: how long ``stamen`` takes to answer ``--help``, ``scenarios`` and argument errors.

Every command runs as a fresh process (``python -m stamen.cli ...``), interleaved, ``--repeats``
times; the figure is the median wall time. Two anchors are measured in the same run, in the same
interleaving:

- ``python -c pass``: the interpreter's own start-up, the floor no CLI can go below;
- ``import stamen.server.config, stamen.simulations.engines``: the engine stack (torch, flwr, ray)
  that the CLI imported before it looked at its arguments (up to commit c25271e).

With ``--baseline REV`` the CLI module of git revision ``REV`` (``stamen/cli.py`` as it was then,
run against today's packages) is measured side by side, so the before/after ratio comes from one
run on one machine.

Regenerate::

    .venv/bin/python benchmarks/bench_cli_startup.py --repeats 7 --baseline c25271e

Prints a markdown table and writes ``benchmarks/results/cli_startup.json``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _provenance import Provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli_startup.json"
ANCHORS = {
    "python -c pass": ["-c", "pass"],
    "import the engine stack": ["-c", "import stamen.server.config, stamen.simulations.engines"],
}
COMMANDS = {
    "stamen --help": ["--help"],
    "stamen scenarios": ["scenarios"],
    "unknown scenario": ["simulate", "no-such-scenario"],
    "unknown --set key": ["simulate", "smoke", "--set", "clients.lrr=1"],
    "unknown codec": ["simulate", "smoke", "--set", "codec.pipeline=nope"],
    "--out is a file": ["simulate", "smoke", "--out", "{file}"],
}


def wall(argv: list[str], cwd: Path) -> float:
    """Seconds from spawn to exit of ``python argv`` (output discarded)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, timeout=300, check=False)
    return time.perf_counter() - start


def variants(baseline: Path | None, file: Path) -> dict[str, list[str]]:
    """Every measured process: anchors, then each command for the current CLI (and the baseline)."""
    out = dict(ANCHORS)
    for name, args in COMMANDS.items():
        args = [a.replace("{file}", str(file)) for a in args]
        out[f"now: {name}"] = ["-m", "stamen.cli", *args]
        if baseline is not None:
            out[f"before: {name}"] = [str(baseline), *args]
    return out


def measure(argvs: dict[str, list[str]], repeats: int, cwd: Path) -> dict[str, float]:
    """Median seconds per variant; the variants are interleaved in every repeat."""
    times: dict[str, list[float]] = {k: [] for k in argvs}
    for _ in range(repeats):
        for name, argv in argvs.items():
            times[name].append(wall(argv, cwd))
    return {k: statistics.median(v) for k, v in times.items()}


def baseline_cli(rev: str, tmp: Path) -> Path:
    """``stamen/cli.py`` of revision ``rev`` as a runnable file."""
    text = subprocess.run(
        ["git", "show", f"{rev}:stamen/cli.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = tmp / f"cli_{rev}.py"
    path.write_text(text)
    return path


def table(medians: dict[str, float], has_baseline: bool) -> str:
    """Markdown: each command's median, before and now, and its ratio to the anchors."""
    floor, stack = medians["python -c pass"], medians["import the engine stack"]
    rows = [
        f"anchors (median of the same run): `python -c pass` {floor:.2f} s, "
        f"engine-stack import {stack:.2f} s",
        "",
        "| command | before (s) | now (s) | before / now | now / engine-stack import |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in COMMANDS:
        now = medians[f"now: {name}"]
        before = medians.get(f"before: {name}") if has_baseline else None
        b = "" if before is None else f"{before:.2f}"
        r = "" if before is None else f"{before / now:.1f}x"
        rows.append(f"| {name} | {b} | {now:.2f} | {r} | {now / stack:.2f} |")
    return "\n".join(rows)


def main() -> None:
    """Measure, print the table, write the results JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline", default=None, metavar="REV", help="also measure stamen/cli.py of REV")
    args = ap.parse_args()
    prov = Provenance.capture()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        file = tmp / "existing.txt"
        file.write_text("x")
        baseline = baseline_cli(args.baseline, tmp) if args.baseline else None
        medians = measure(variants(baseline, file), args.repeats, tmp)
    print(table(medians, baseline is not None))
    doc: dict[str, Any] = {"baseline": args.baseline, "repeats": args.repeats, "median_s": medians}
    prov.write(RESULTS, doc)


if __name__ == "__main__":
    main()
