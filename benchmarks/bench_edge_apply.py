"""Apply + reload latency of signed delta updates on a ~25M-parameter ONNX model (edge runtime).

For each codec (dense, 1 %-sparse top-k, int8, LoRA-style low rank) the script times
``EdgeRuntime.apply`` on an ONNX store — verify, decode, add, write a shadow version, fsync,
rename (= "apply") plus building the new onnxruntime session (= "reload") and committing the
manifest — next to two anchors measured in the same run on the same disk:

- a plain copy of the weight bytes (``weights.data`` -> a new file, fsynced), and
- a bare ``onnxruntime.InferenceSession`` load of the same model.

Goals (issue): apply <= 2x copy; apply + reload + commit <= 2x (copy + session load). The model is
an MLP 1024 -> 4096 -> 4096 -> 1024 (25.18M parameters, 100.7 MB), exported once from torch with
``dynamo=True, optimize=False``; the device never re-exports. After each codec's first update the
served outputs are checked against the PyTorch model with the same weights (<= 1e-5 relative).

    .venv/bin/python benchmarks/bench_edge_apply.py [--repeats 5] [--quick]

Writes ``benchmarks/results/edge_apply.json`` (``edge_apply_quick.json`` with ``--quick``;
``--out`` elsewhere).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: no BLAS oversubscription (edge.md §8)

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _provenance import Provenance, out_path, parser

from stamen.edge import EdgeRuntime, create_delta, create_store
from stamen.edge.arch import build_model
from stamen.edge.export import export_onnx
from stamen.edge.store import version_dir
from stamen.protocols import Signer

ARCH = {"name": "mlp", "input_shape": [1024], "hidden": [4096, 4096], "classes": 1024}
CODECS = {"dense": "dense", "topk 1%": "topk(ratio=0.01)", "int8": "int8", "lowrank r=8": "lowrank(rank=8)"}
THREADS = 2
#: EdgeRuntime.timings phases counted as "apply" (verify .. rename) and as "reload".
APPLY_PHASES = ("verify", "decode", "add", "fsync", "hash_wait", "rename")
RELOAD_PHASES = ("session", "commit")


def _target(weights: dict[str, np.ndarray], kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Next version: Gaussian N(0, 1e-3) changes, or a LoRA-style rank-8 change of every matrix."""
    out = {}
    for name, w in weights.items():
        if kind.startswith("lowrank") and w.ndim == 2:
            b = rng.normal(0, 1e-2, (w.shape[0], 8)).astype(np.float32)
            a = rng.normal(0, 1e-2, (8, w.shape[1])).astype(np.float32)
            out[name] = w + b @ a
        else:
            out[name] = w + rng.normal(0, 1e-3, w.shape).astype(np.float32)
    return out


def _copy_anchor(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def _load_anchor(graph: Path) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    t0 = time.perf_counter()
    ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
    return time.perf_counter() - t0


def _check_outputs(rt: EdgeRuntime, x: np.ndarray) -> float:
    model = build_model(ARCH)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in rt.global_weights().items()})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(rt.predict(x) - want).max() / np.abs(want).max())


def run(repeats: int, workdir: Path) -> dict:
    torch.set_num_threads(THREADS)
    signer = Signer.generate()
    signer.save(workdir / "k.pem", workdir / "k.pub")
    t0 = time.perf_counter()
    export_onnx(build_model(ARCH, seed=0), workdir / "model.onnx")
    print(f"exported the 25.18M-parameter model once in {time.perf_counter() - t0:.1f} s (host side)")
    create_store(workdir / "store", workdir / "model.onnx", workdir / "k.pub")
    rt = EdgeRuntime.open(workdir / "store", threads=THREADS)
    rng, x = np.random.default_rng(0), np.random.default_rng(1).normal(size=(8, 1024)).astype(np.float32)
    rows, version = {}, 0
    for label, codec in CODECS.items():
        times: dict[str, list[float]] = {k: [] for k in ("apply", "reload", "total", "copy", "load")}
        sizes, phases = [], []
        for rep in range(repeats):
            base = {k: np.array(v) for k, v in rt.global_weights().items()}
            version += 1
            update = create_delta(
                base, _target(base, label, rng), codec, signer, version=version, seed=version
            )
            del base
            data_file = version_dir(rt.store, rt.version().version) / "weights.data"
            times["copy"].append(_copy_anchor(data_file, workdir / "copy.bin"))
            times["load"].append(_load_anchor(data_file.with_name("model.onnx")))
            t0 = time.perf_counter()
            rt.apply(update)
            total = time.perf_counter() - t0
            tm = rt.timings
            times["apply"].append(sum(tm[k] for k in APPLY_PHASES))
            times["reload"].append(sum(tm[k] for k in RELOAD_PHASES))
            times["total"].append(total)
            sizes.append(len(update))
            phases.append(dict(tm))
            if rep == 0:
                err = _check_outputs(rt, x)
                assert err <= 1e-5, f"{label}: served outputs differ from torch by {err:.2e}"
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[label] = {
            "codec": codec,
            "update_bytes": int(statistics.median(sizes)),
            **{f"{k}_ms": round(1000 * v, 1) for k, v in med.items()},
            "apply_over_copy": round(med["apply"] / med["copy"], 2),
            "total_over_copy_plus_load": round(med["total"] / (med["copy"] + med["load"]), 2),
            "phases_ms": {k: round(1000 * statistics.median(p[k] for p in phases), 1) for k in phases[0]},
            "max_rel_err_vs_torch": err,
        }
        print(_row(label, rows[label]))
    return {"model": ARCH, "parameters": 25_178_112, "repeats": repeats, "threads": THREADS, "rows": rows}


def _row(label: str, r: dict) -> str:
    return (
        f"{label:<12} {r['update_bytes']:>12,d} B  apply {r['apply_ms']:7.1f} ms"
        f"  reload {r['reload_ms']:6.1f} ms  | copy {r['copy_ms']:6.1f} ms  load {r['load_ms']:6.1f} ms"
        f"  | apply/copy {r['apply_over_copy']:.2f}  total/(copy+load) {r['total_over_copy_plus_load']:.2f}"
        f"  phases {r['phases_ms']}"
    )


def main() -> None:
    ap = parser(__doc__, quick="2 repeats", out="edge_apply.json")
    ap.add_argument("--repeats", type=int, default=5, help="updates per codec (median reported)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="store location (default: a temp dir on /work)"
    )
    args = ap.parse_args()
    prov = Provenance.capture()
    repeats = 2 if args.quick else args.repeats
    base_dir = args.workdir or Path(__file__).resolve().parent / "results"
    with tempfile.TemporaryDirectory(dir=base_dir, prefix=".edge-apply-") as tmp:
        result = run(repeats, Path(tmp))
    prov.write(out_path(args), result)


if __name__ == "__main__":
    main()
