"""Plots for the privacy/compression tables: accuracy vs bytes, and accuracy vs ε.

Reads what `bench_compression.py` and `bench_privacy.py` wrote (nothing is re-measured):

    .venv/bin/python benchmarks/plot_privacy_compression.py

Writes benchmarks/results/compression_accuracy_vs_bytes.png and privacy_accuracy_vs_epsilon.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def plot_compression(data: dict[str, Any], out: Path) -> None:
    """One panel per dataset: final accuracy against bytes per client per round (log x)."""
    datasets = sorted({t["dataset"] for t in data["training"]})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        for t in (t for t in data["training"] if t["dataset"] == name):
            ax.scatter(t["bytes_per_client_round"], t["final_accuracy"])
            ax.annotate(t["label"], (t["bytes_per_client_round"], t["final_accuracy"]), fontsize=7)
        ax.set(
            xscale="log",
            xlabel="bytes up per client per round",
            ylabel="final test accuracy",
            title=f"{name}: accuracy vs bytes",
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_privacy(data: dict[str, Any], out: Path) -> None:
    """One panel per dataset: accuracy against target ε for each mode; dashed line = no privacy."""
    rows = [r for r in data["summary"] if r.get("status") == "ok"]
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        mine = [r for r in rows if r["dataset"] == name]
        for mode in sorted({r["mode"] for r in mine if r["mode"] != "off"}):
            pts = sorted((r["target_epsilon"], r["accuracy"]) for r in mine if r["mode"] == mode)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
        for r in (r for r in mine if r["mode"] == "off"):
            ax.axhline(r["accuracy"], linestyle="--", color="gray", label="no privacy")
        ax.set(
            xscale="log",
            xlabel="target ε (δ = 1e-5)",
            ylabel="final test accuracy",
            title=f"{name}: accuracy vs ε",
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    comp, priv = RESULTS / "compression.json", RESULTS / "privacy.json"
    for path in (comp, priv):
        if not path.exists():
            print(f"missing {path}: run the benchmark first", file=sys.stderr)
            return 1
    plot_compression(json.loads(comp.read_text()), RESULTS / "compression_accuracy_vs_bytes.png")
    plot_privacy(json.loads(priv.read_text()), RESULTS / "privacy_accuracy_vs_epsilon.png")
    print("wrote compression_accuracy_vs_bytes.png and privacy_accuracy_vs_epsilon.png in", RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
