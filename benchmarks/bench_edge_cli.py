"""Start-up cost of the edge CLI on an ONNX store: wall time of each command in fresh processes
(median of ``--repeats``), the import time ``python -X importtime`` reports for it, and whether
torch was loaded — beside ``python -c pass`` and ``python -c "import numpy"`` timed in the same run
(the floor any numpy program pays on this machine).

Commands: ``edge status``, ``edge predict`` (a 98-sample digits file), ``edge apply`` (an int8
update; a chain of versions so every repeat applies a new one), ``edge rollback``, and two
errors: a wrongly shaped input file and a missing store.

    .venv/bin/python benchmarks/bench_edge_cli.py [--repeats 7] [--code DIR --label old]

``--code DIR`` runs the CLI from another source tree laid out as an importable ``stamen`` package
(``DIR/stamen/{cli.py, edge/, protocols/, ...}``, e.g. an older commit exported with
``git archive``), through ``PYTHONPATH``, for before/after figures. Writes
``benchmarks/results/edge_cli.json`` (``edge_cli_<label>.json`` with ``--label``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _provenance import Provenance

from stamen.edge import create_store
from stamen.edge.arch import build_model
from stamen.edge.delta import create_delta_with_result
from stamen.edge.export import export_onnx
from stamen.edge.onnx_backend import read_onnx_source
from stamen.protocols import Signer

RESULTS = Path(__file__).resolve().parent / "results" / "edge_cli.json"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # PYTHONPATH is added by --code
CWD = "/"  # never the checkout: `python -m stamen.cli` would import ./stamen first
ARCH = {"name": "cnn", "input_shape": [1, 8, 8], "channels": [16, 32], "strides": [1, 2], "hidden": [],
        "classes": 10}  # fmt: skip


def _wall(cmd: list[str], repeats: int) -> tuple[float, int]:
    """Median wall seconds of ``cmd`` over ``repeats`` fresh processes, and its last exit code."""
    times, code = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        code = subprocess.run(cmd, capture_output=True, env=ENV, cwd=CWD, check=False).returncode
        times.append(time.perf_counter() - t0)
    return statistics.median(times), code


def _imports(args: list[str], repeats: int = 3) -> tuple[float, bool]:
    """Median total import seconds (-X importtime, top-level entries) over ``repeats`` runs, and
    whether torch was imported."""
    totals, torch_seen = [], False
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "stamen.cli", *args],
            capture_output=True, text=True, env=ENV, cwd=CWD, check=False,
        )  # fmt: skip
        total = 0
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            _, cumulative, name = line.split(":", 1)[1].split("|")
            torch_seen |= name.strip() == "torch"
            if not name[1:].startswith(" ") and cumulative.strip().isdigit():  # top level
                total += int(cumulative)
        totals.append(total / 1e6)
    return statistics.median(totals), torch_seen


def _setup(tmp: Path, repeats: int) -> dict[str, Path]:
    signer = Signer.generate()
    signer.save(tmp / "private.pem", tmp / "public.pem")
    export_onnx(build_model(ARCH, seed=0), tmp / "v0.onnx")
    create_store(tmp / "device", tmp / "v0.onnx", tmp / "public.pem")
    cur, _, _ = read_onnx_source(tmp / "v0.onnx")
    rng = np.random.default_rng(0)
    for v in range(1, repeats + 2):
        nxt = {k: a + rng.normal(0, 0.01, a.shape).astype(np.float32) for k, a in cur.items()}
        signed = create_delta_with_result(cur, nxt, "int8", signer, version=v)
        (tmp / f"u{v}.stamen").write_bytes(signed.data)
        cur = signed.weights  # what the device holds after applying it
    np.savez(tmp / "x.npz", x=rng.normal(size=(98, 64)).astype(np.float32), y=rng.integers(0, 10, 98))
    np.savez(tmp / "bad.npz", x=np.zeros((98, 7), np.float32))
    return {"store": tmp / "device", "x": tmp / "x.npz", "bad": tmp / "bad.npz"}


def run(repeats: int) -> dict:
    rows: dict[str, dict] = {}
    py = [sys.executable]
    rows["python -c pass"] = {"wall_s": _wall([*py, "-c", "pass"], repeats)[0]}
    rows["python -c 'import numpy'"] = {"wall_s": _wall([*py, "-c", "import numpy"], repeats)[0]}
    with tempfile.TemporaryDirectory(prefix="stamen-cli-") as tmp:
        f = _setup(Path(tmp), repeats)
        store = str(f["store"])
        commands = {
            "edge status": ["edge", "status", "--model", store],
            "edge predict": ["edge", "predict", "--model", store, "--input", str(f["x"])],
            "error: wrongly shaped input": ["edge", "predict", "--model", store, "--input", str(f["bad"])],
            "error: missing store": ["edge", "status", "--model", str(Path(tmp) / "nothing")],
        }
        for name, args in commands.items():
            wall, code = _wall([*py, "-m", "stamen.cli", *args], repeats)
            imp, torch_seen = _imports(args)
            rows[name] = {"wall_s": wall, "exit": code, "import_s": imp, "torch_imported": torch_seen}
        applies = []
        for v in range(1, repeats + 1):
            t0 = time.perf_counter()
            update = str(Path(tmp) / f"u{v}.stamen")
            cmd = [*py, "-m", "stamen.cli", "edge", "apply", "--model", store, update]
            subprocess.run(cmd, capture_output=True, env=ENV, cwd=CWD, check=True)
            applies.append(time.perf_counter() - t0)
        last = ["edge", "apply", "--model", store, str(Path(tmp) / f"u{repeats + 1}.stamen")]
        imp, torch_seen = _imports(last)
        rows["edge apply"] = {"wall_s": statistics.median(applies), "exit": 0, "import_s": imp,
                              "torch_imported": torch_seen}  # fmt: skip
    for name, row in rows.items():
        extra = (
            f"  imports {row['import_s']:.3f} s  torch {row['torch_imported']}" if "import_s" in row else ""
        )
        print(f"{name:<30} {row['wall_s']:.3f} s{extra}")
    return {"repeats": repeats, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--code", type=Path, default=None, help="source tree to run the CLI from")
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    prov = Provenance.capture()
    if args.code is not None:
        ENV["PYTHONPATH"] = str(args.code.resolve())
    result = run(args.repeats)
    out = RESULTS.with_name(f"{RESULTS.stem}_{args.label}.json") if args.label else RESULTS
    prov.write(out, result)


if __name__ == "__main__":
    main()
