"""Codec pipelines: payload size and encode/decode throughput, with zstd as the in-run anchor.

For a float32 update of ``--size`` parameters (a few Gaussian tensors, fixed seed) and every
codec pipeline below, measure the payload bytes, the size ratio against dense fp32, the relative
L2 error, and the encode and decode throughput in MB/s of fp32 input (median of ``--repeats``
runs). In the same run, zstd level 3 compresses and decompresses the raw dense fp32 bytes: the
anchor the codec throughputs are divided by, so the ratios survive a change of machine.

Regenerate::

    .venv/bin/python benchmarks/bench_codecs.py --size 1000000 --repeats 7

Prints a markdown table and writes ``benchmarks/results/codecs.json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zstandard
from _provenance import Provenance, out_path, parser

from stamen.protocols import CodecPipeline, CodecSpec, tensor_table

PIPELINES = [
    "dense",
    "fp16",
    "topk(ratio=0.01)",
    "int8",
    "topk(ratio=0.01)+int8",
    "dense+zstd",
    "topk(ratio=0.01)+int8+zstd",
]


def make_update(size: int, seed: int) -> dict[str, np.ndarray]:
    """Four tensors (60 %, 30 %, ~10 % matrices and a bias) summing to ``size`` parameters."""
    rng = np.random.default_rng(seed)
    parts = [int(size * 0.6) // 100 * 100, int(size * 0.3) // 100 * 100, int(size * 0.099) // 10 * 10]
    shapes: list[tuple[int, ...]] = [(parts[0] // 100, 100), (parts[1] // 100, 100)]
    shapes += [(parts[2] // 10, 10), (size - sum(parts),)]
    names = ["fc1.weight", "fc2.weight", "fc3.weight", "fc3.bias"]
    return {n: rng.normal(0, 0.01, size=s).astype(np.float32) for n, s in zip(names, shapes, strict=True)}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_l2(delta: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> float:
    """``||decoded - delta|| / ||delta||`` over all tensors (float64 accumulation)."""
    num = sum(float(np.sum((decoded[k].astype(np.float64) - v) ** 2)) for k, v in delta.items())
    den = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values())
    return (num / den) ** 0.5


def bench_anchor(delta: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """zstd level 3 over the raw dense fp32 bytes: compress / decompress MB/s."""
    raw = b"".join(v.tobytes() for v in delta.values())
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    frame = cctx.compress(raw)
    mb = len(raw) / 1e6
    return {
        "compress_mb_s": mb / median_seconds(lambda: cctx.compress(raw), repeats),
        "decompress_mb_s": mb / median_seconds(lambda: dctx.decompress(frame), repeats),
        "ratio": len(raw) / len(frame),
    }


def bench_codec(text: str, delta: dict[str, np.ndarray], repeats: int, seed: int) -> dict[str, Any]:
    """Bytes, error and throughput of one pipeline."""
    pipeline = CodecPipeline(CodecSpec.parse(text))
    table = tensor_table(delta)
    payload, decoded = pipeline.roundtrip(delta, np.random.default_rng(seed))
    mb = sum(v.nbytes for v in delta.values()) / 1e6
    enc = median_seconds(lambda: pipeline.encode(delta, np.random.default_rng(seed)), repeats)
    dec = median_seconds(lambda: pipeline.decode(payload, table), repeats)
    return {
        "codec": pipeline.spec.to_string(),
        "bytes": len(payload),
        "rel_l2_error": rel_l2(delta, decoded),
        "encode_mb_s": mb / enc,
        "decode_mb_s": mb / dec,
    }


def markdown(rows: list[dict[str, Any]], anchor: dict[str, float], dense_bytes: int) -> str:
    """The results as a markdown table (ratios against dense fp32 and against zstd)."""
    lines = [
        "| codec | bytes | × smaller than dense | rel. L2 error | encode MB/s | decode MB/s "
        "| encode / zstd-c | decode / zstd-d |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['codec']}` | {r['bytes']:,} | {dense_bytes / r['bytes']:.1f} "
            f"| {r['rel_l2_error']:.3g} | {r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} "
            f"| {r['encode_mb_s'] / anchor['compress_mb_s']:.2f} "
            f"| {r['decode_mb_s'] / anchor['decompress_mb_s']:.2f} |"
        )
    lines.append(
        f"| anchor: zstd-3 on raw fp32 | ratio {anchor['ratio']:.3f} | | "
        f"| {anchor['compress_mb_s']:.0f} (c) | {anchor['decompress_mb_s']:.0f} (d) | 1 | 1 |"
    )
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, out="codecs.json")
    p.add_argument("--size", type=int, default=1_000_000, help="parameters in the update")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (>=5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.size < 1000 or args.repeats < 1:
        p.error("--size must be >= 1000 and --repeats >= 1")
    prov = Provenance.capture()
    delta = make_update(args.size, args.seed)
    anchor = bench_anchor(delta, args.repeats)
    rows = [bench_codec(text, delta, args.repeats, args.seed) for text in PIPELINES]
    dense_bytes = rows[0]["bytes"]
    for row in rows:
        row["ratio_vs_dense"] = dense_bytes / row["bytes"]
    print(markdown(rows, anchor, dense_bytes))
    result = {
        "config": {
            "size": args.size,
            "repeats": args.repeats,
            "seed": args.seed,
            "tensors": [[t.name, list(t.shape)] for t in tensor_table(delta)],
        },
        "environment": {"zstandard": zstandard.__version__},
        "anchor_zstd3_raw_fp32": anchor,
        "codecs": rows,
    }
    prov.write(out_path(args), result)


if __name__ == "__main__":
    main()
