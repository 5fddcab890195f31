"""Compression codecs (FedZip, ComPEFT, DARE, RQM): bytes, throughput and final accuracy.

Part 1 — a 1M-parameter float32 update (``bench_codecs.make_update``: four Gaussian tensors, fixed
seed): payload bytes, × smaller than dense fp32, relative L2 error, encode/decode MB/s (median of
``--repeats``), and the bytes after a zstd-3 pass over the payload. Anchor in the same run: zstd-3
on the raw fp32 bytes of the same update (its ratio and MB/s). FedZip is shown with each of the
paper's three position encodings and with ``auto``.

Part 2 — federated training through the real pipeline
(``load_scenario("smoke", overrides) -> ServerConfig.from_scenario -> run_engine("inprocess")``)
on mnist1d and digits with an MLP 256-256, each codec vs the uncompressed run (same seed, same
everything else): bytes up per client per round (``len()`` of the packed envelope, header
included), × fewer than dense, final accuracy and the mean of the last 5 rounds, and the
difference to dense in accuracy points. FedZip runs at the paper's setting (20 %, 3 clusters,
no error feedback, as in the original) and at 1-2 % with error feedback.

Regenerate::

    .venv/bin/python benchmarks/bench_compression.py            # ~10 min on 2 busy cores
    .venv/bin/python benchmarks/bench_compression.py --quick    # ~2 min: fewer rounds and rows
    .venv/bin/python benchmarks/bench_compression.py --rows 0,3,4,6 --seeds 0,1,2 \
        --out benchmarks/results/compression_seeds.json         # key rows over 3 seeds, ~12 min

Prints markdown tables and writes ``benchmarks/results/compression.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import Provenance, out_path, parser
from bench_codecs import bench_anchor, make_update, median_seconds, rel_l2

from stamen.protocols import CodecPipeline, CodecSpec, encode_update, tensor_table
from stamen.server.config import ServerConfig
from stamen.simulations.engines import run_engine
from stamen.simulations.scenario import load_scenario
from stamen.task.models import build_model
from stamen.task.weights import get_weights

UPDATE_CODECS = [
    "dense",
    "fedzip(position=absolute)",
    "fedzip(position=gaps)",
    "fedzip(position=entropy)",
    "fedzip",
    "fedzip(density=0.01)",
    "compeft",
    "compeft(density=0.01)",
    "dare",
    "dare+int8",
    "rqm(m=16)",
    "rqm(m=2)",
    "topk(ratio=0.01)+int8+zstd",
]
# (label, overrides) for the training runs; the first row is the uncompressed reference
TRAIN_ROWS: list[tuple[str, list[str]]] = [
    ("dense (fp32)", ["codec.pipeline=dense"]),
    ("fedzip 20 %, 3 clusters (paper)", ["codec.pipeline=fedzip"]),
    ("fedzip 20 % + EF", ["codec.pipeline=fedzip", "codec.error_feedback=true"]),
    ("fedzip 3 % + EF", ["codec.pipeline=fedzip", "codec.fedzip.density=0.03", "codec.error_feedback=true"]),
    ("fedzip 2 % + EF", ["codec.pipeline=fedzip", "codec.fedzip.density=0.02", "codec.error_feedback=true"]),
    ("fedzip 1 % + EF", ["codec.pipeline=fedzip", "codec.fedzip.density=0.01", "codec.error_feedback=true"]),
    (
        "compeft 2 %, α=2 + EF",
        [
            "codec.pipeline=compeft",
            "codec.compeft.density=0.02",
            "codec.compeft.alpha=2.0",
            "codec.error_feedback=true",
        ],
    ),
    ("dare p=0.9 + int8", ["codec.pipeline=dare,int8"]),
]
QUICK_ROWS = [0, 1, 5]
SWEEP = (0.2, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005)
DATASETS = {
    "mnist1d": ["data.dataset=mnist1d", "data.num_samples=10000", "clients.lr=0.05", "clients.momentum=0.9"],
    "digits": ["data.dataset=digits", "clients.lr=0.05", "clients.momentum=0.9"],
}
COMMON = [
    "data.num_clients=10",
    "clients.per_round=10",
    "model.hidden=256,256",
    "clients.batch_size=32",
    "clients.local_epochs=1",
    "eval.every=1",
]


def bench_update_codec(text: str, delta: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """Bytes, error, MB/s and zstd-after bytes of one pipeline on the 1M-parameter update."""
    pipeline = CodecPipeline(CodecSpec.parse(text))
    table = tensor_table(delta)
    payload, decoded = pipeline.roundtrip(delta, np.random.default_rng(0))
    mb = sum(v.nbytes for v in delta.values()) / 1e6
    enc = median_seconds(lambda: pipeline.encode(delta, np.random.default_rng(0)), repeats)
    dec = median_seconds(lambda: pipeline.decode(payload, table), repeats)
    return {
        "codec": pipeline.spec.to_string(),
        "bytes": len(payload),
        "bytes_after_zstd3": len(zstandard.ZstdCompressor(level=3).compress(payload)),
        "rel_l2_error": rel_l2(delta, decoded),
        "encode_mb_s": mb / enc,
        "decode_mb_s": mb / dec,
    }


def update_table(rows: list[dict[str, Any]], anchor: dict[str, float], dense: int) -> str:
    """Markdown for part 1."""
    lines = [
        "| codec | bytes | × vs dense | + zstd-3 | rel. L2 err | enc MB/s | dec MB/s "
        "| enc / zstd-c | dec / zstd-d |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['codec']}` | {r['bytes']:,} | {dense / r['bytes']:.1f} | {r['bytes_after_zstd3']:,} "
            f"| {r['rel_l2_error']:.3g} | {r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} "
            f"| {r['encode_mb_s'] / anchor['compress_mb_s']:.3f} "
            f"| {r['decode_mb_s'] / anchor['decompress_mb_s']:.3f} |"
        )
    lines.append(
        f"| anchor: zstd-3 on the raw fp32 update | {dense / anchor['ratio']:,.0f} | {anchor['ratio']:.3f} | "
        f"| 0 | {anchor['compress_mb_s']:.0f} | {anchor['decompress_mb_s']:.0f} | 1 | 1 |"
    )
    return "\n".join(lines)


def train_once(dataset: str, overrides: list[str], rounds: int, seed: int) -> dict[str, Any]:
    """One in-process federated run; returns bytes per client-round and the accuracy curve."""
    scenario = load_scenario(
        "smoke", [*COMMON, *DATASETS[dataset], f"rounds={rounds}", f"seed={seed}", *overrides]
    )
    cfg = ServerConfig.from_scenario(scenario)
    start = time.perf_counter()
    result = run_engine("inprocess", cfg)
    accs = [r.accuracy for r in result.rounds]
    return {
        "codec": cfg.codec.to_string(),
        "error_feedback": cfg.error_feedback,
        "bytes_per_client_round": result.rounds[-1].bytes_up / cfg.per_round,
        "final_accuracy": accs[-1],
        "last5_accuracy": float(np.mean(accs[-5:])),
        "accuracy_curve": accs,
        "wall_s": time.perf_counter() - start,
    }


def train_table(rows: list[dict[str, Any]]) -> str:
    """Markdown for part 2: means over seeds; differences against the first (dense) row per data set."""
    lines = [
        "| data | codec | bytes / client / round | × fewer than dense | final acc. | Δ pts "
        "| last-5 mean | Δ pts | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref: dict[str, Any] = {}
    for r in rows:
        ref.setdefault(r["dataset"], r)
        base = ref[r["dataset"]]
        spread = f" ±{50 * (max(r['finals']) - min(r['finals'])):.1f}" if len(r["finals"]) > 1 else ""
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['bytes_per_client_round']:,.0f} "
            f"| {base['bytes_per_client_round'] / r['bytes_per_client_round']:.1f} "
            f"| {r['final_accuracy']:.4f} "
            f"| {100 * (r['final_accuracy'] - base['final_accuracy']):+.1f}{spread} "
            f"| {r['last5_accuracy']:.4f} | {100 * (r['last5_accuracy'] - base['last5_accuracy']):+.1f} "
            f"| {len(r['finals'])} |"
        )
    return "\n".join(lines)


def train_row(
    dataset: str, label: str, overrides: list[str], rounds: int, seeds: list[int]
) -> dict[str, Any]:
    """One table row: the same configuration over ``seeds``, accuracies averaged."""
    runs = [train_once(dataset, overrides, rounds, seed) for seed in seeds]
    for seed, run in zip(seeds, runs, strict=True):
        print(
            f"  {dataset:8s} {label:34s} seed {seed} acc {run['final_accuracy']:.4f} "
            f"bytes {run['bytes_per_client_round']:,.0f} ({run['wall_s']:.0f} s)",
            flush=True,
        )
    return {
        "dataset": dataset,
        "label": label,
        "rounds": rounds,
        "seeds": seeds,
        "codec": runs[0]["codec"],
        "error_feedback": runs[0]["error_feedback"],
        "bytes_per_client_round": float(np.mean([r["bytes_per_client_round"] for r in runs])),
        "final_accuracy": float(np.mean([r["final_accuracy"] for r in runs])),
        "last5_accuracy": float(np.mean([r["last5_accuracy"] for r in runs])),
        "finals": [r["final_accuracy"] for r in runs],
        "runs": runs,
    }


def model_update(dataset: str) -> dict[str, np.ndarray]:
    """A Gaussian update shaped like the training runs' model (for envelope sizes)."""
    cfg = ServerConfig.from_scenario(load_scenario("smoke", [*COMMON, *DATASETS[dataset]]))
    rng = np.random.default_rng(0)
    weights = get_weights(build_model(cfg.task))
    return {k: rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in weights.items()}


def density_sweep(delta: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """FedZip bytes vs density: bare payload on the 1M update, whole envelope on the mnist1d model."""
    model = model_update("mnist1d")
    kwargs: dict[str, Any] = {"base_hash": "0" * 64, "version": 100, "sender": "client-9"}
    dense_env = len(encode_update(model, CodecSpec.parse("dense"), rng=np.random.default_rng(0), **kwargs))
    rows = []
    for density in SWEEP:
        spec = CodecSpec.parse(f"fedzip(density={density!r})")
        payload = CodecPipeline(spec).encode(delta, np.random.default_rng(0))
        env = len(encode_update(model, spec, rng=np.random.default_rng(0), **kwargs))
        rows.append(
            {
                "density": density,
                "payload_bytes_1m": len(payload),
                "ratio_1m": 4e6 / len(payload),
                "envelope_bytes_mnist1d_model": env,
                "ratio_mnist1d_model": dense_env / env,
            }
        )
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Markdown for the density sweep."""
    lines = [
        "| density | 1M update: payload bytes | × vs fp32 | mnist1d MLP: envelope bytes "
        "| × vs dense envelope |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['density']:g} | {r['payload_bytes_1m']:,} | {r['ratio_1m']:.0f} "
            f"| {r['envelope_bytes_mnist1d_model']:,} | {r['ratio_mnist1d_model']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, quick="fewer rounds, codecs and repeats", out="compression.json")
    p.add_argument("--rounds-mnist1d", type=int, default=100)
    p.add_argument("--rounds-digits", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
    p.add_argument("--rows", default="", help="comma-separated training-row indices (default: all)")
    args = p.parse_args()
    prov = Provenance.capture()
    repeats = 3 if args.quick else args.repeats
    rounds = {
        "mnist1d": 30 if args.quick else args.rounds_mnist1d,
        "digits": 15 if args.quick else args.rounds_digits,
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    picks = [int(i) for i in args.rows.split(",")] if args.rows else (QUICK_ROWS if args.quick else None)
    delta = make_update(1_000_000, 0)
    anchor = bench_anchor(delta, repeats)
    codecs = UPDATE_CODECS[:6] if args.quick else UPDATE_CODECS
    update_rows = [bench_update_codec(text, delta, repeats) for text in codecs]
    print(update_table(update_rows, anchor, update_rows[0]["bytes"]) + "\n", flush=True)
    sweep = density_sweep(delta)
    print(sweep_table(sweep) + "\n", flush=True)
    chosen = [TRAIN_ROWS[i] for i in picks] if picks is not None else TRAIN_ROWS
    train_rows = [train_row(d, label, ov, rounds[d], seeds) for d in DATASETS for label, ov in chosen]
    print("\n" + train_table(train_rows))
    result = {
        "config": {
            "update_size": 1_000_000,
            "repeats": repeats,
            "seeds": seeds,
            "rounds": rounds,
            "common_overrides": COMMON,
            "dataset_overrides": DATASETS,
            "quick": args.quick,
        },
        "environment": {"zstandard": zstandard.__version__},
        "anchor_zstd3_raw_fp32": anchor,
        "update_codecs": update_rows,
        "fedzip_density_sweep": sweep,
        "training": train_rows,
    }
    prov.write(out_path(args), result)


if __name__ == "__main__":
    main()
