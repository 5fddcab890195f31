"""Container images: size of each role image and (with ``--build``) its uncached build time.

Anchor, measured in the same run: the ``superlink`` image, which carries Flower only. The ``server``
and ``device`` images add stamen's runtime (torch, onnxruntime, scikit-learn), so their ratios to
the anchor say what the learning stack costs in bytes and build seconds, independent of the
machine. The base image's size is printed too (every image includes it).

Regenerate (root, a docker engine, the wheelhouse and a base image; see docs/deployment.md)::

    make wheelhouse
    .venv/bin/python benchmarks/bench_deploy_images.py --base stamen-local/python:3.11-slim-bookworm --build

Prints a markdown table and writes ``benchmarks/results/deploy_images.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

from _provenance import Provenance

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("superlink", "server", "device")
RESULTS = ROOT / "benchmarks" / "results" / "deploy_images.json"


def image_size(tag: str) -> int:
    """Size in bytes that ``docker image inspect`` reports for ``tag``."""
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise SystemExit(f"image {tag} not found: {out.stderr.strip()} (make images)")
    return int(out.stdout.strip())


def build_seconds(role: str, base: str, tag: str) -> float:
    """Wall time of an uncached ``docker build`` of ``role`` from the wheelhouse context."""
    cmd = ["docker", "build", "-q", "--no-cache", "-f", str(ROOT / "deploy" / "Dockerfile")]
    cmd += ["--target", role, "--build-arg", f"ROLE={role}", "--build-arg", f"BASE={base}", "-t", tag]
    start = time.perf_counter()
    subprocess.run([*cmd, str(ROOT / "deploy" / "build")], check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - start


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def measure(base: str, tag: str, build: bool) -> dict[str, Any]:
    """Sizes (and build times) of every role image, with ratios to the superlink anchor."""
    rows: dict[str, dict[str, float]] = {}
    for role in ROLES:
        row: dict[str, float] = {}
        if build:
            row["build_s"] = build_seconds(role, base, f"stamen-{role}:{tag}")
        row["size_mb"] = image_size(f"stamen-{role}:{tag}") / 1e6
        rows[role] = row
    anchor = rows["superlink"]
    for row in rows.values():
        row["size_ratio"] = row["size_mb"] / anchor["size_mb"]
        if build:
            row["build_ratio"] = row["build_s"] / anchor["build_s"]
    return {"base": base, "base_size_mb": image_size(base) / 1e6, "images": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="stamen-local/python:3.11-slim-bookworm")
    p.add_argument("--tag", default="latest")
    p.add_argument("--build", action="store_true", help="rebuild each image without cache and time it")
    args = p.parse_args()
    prov = Provenance.capture()
    res = measure(args.base, args.tag, args.build)
    print(f"base {args.base}: {res['base_size_mb']:.0f} MB")
    print("| image | size (MB) | size / superlink | build (s) | build / superlink |")
    print("|---|---|---|---|---|")
    for role, row in res["images"].items():
        b = f"{row['build_s']:.0f} | {row['build_ratio']:.2f}" if args.build else "- | -"
        print(f"| stamen-{role} | {row['size_mb']:.0f} | {row['size_ratio']:.2f} | {b} |")
    prov.write(RESULTS, res)


if __name__ == "__main__":
    main()
