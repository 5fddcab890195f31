"""LoRA downlink bytes: the full model every round against the cached downlink (BENCHMARKS.md §22).

Runs each parameter-efficient scenario twice in the in-process engine, side by side: with
``clients.downlink = "full"`` (the anchor: the whole model to every sampled client every round) and
``"cached"`` (the default for adapter runs: a client keeps the model it trained from and gets only
the tensors/entries changed since; a client not heard from yet, from the model it builds itself).
Prints, per scenario, bytes down per client per round (the full model, and the median patch), the
run's total bytes down and the ratio, and checks the
two runs end with the same model bit for bit (the cached downlink is exact). Bytes are ``len()`` of
Flower's serialization of what is sent (``.npy`` per array), the figure both engines report.

Default: the real all-MiniLM-L6-v2 (``minilm-lora``, its ``lora_naive`` variant, ``minilm-fedsb``),
``--rounds`` rounds, 10 clients, 5 per round. ``--quick``: the 2-layer ``minilm-tiny``, 3 rounds,
3 clients, 2 per round (a minute).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Provenance, out_path, parser

SCENARIOS = {  # label -> (built-in scenario, extra overrides)
    "minilm-lora (lora_exact)": ("minilm-lora", ()),
    "minilm-lora (lora_naive)": ("minilm-lora", ("aggregation.rule=lora_naive",)),
    "minilm-fedsb": ("minilm-fedsb", ()),
}
QUICK = ["model.name=minilm-tiny", "data.num_samples=300", "data.num_clients=3", "clients.per_round=2"]
QUICK_EXTRA = {"minilm-fedsb": ("lora.rank=16",)}  # the tiny model is 32 wide


class Recorder:
    """Wraps the run's downlink: the bytes of every full model and every patch it sends."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.full, self.patch = inner, [], []  # type: ignore[var-annotated]

    def payload(self, client: str, rnd: int, weights: Any) -> Any:
        from stamen.protocols.flower import weights_nbytes
        from stamen.server.driver.cached_downlink import patch_nbytes

        sent = self.inner.payload(client, rnd, weights)
        if sent.weights is not None:
            self.full.append(weights_nbytes(sent.weights))
        else:
            self.patch.append(patch_nbytes(sent.patch))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run(scenario: str, overrides: list[str], mode: str) -> tuple[Any, Recorder]:
    """One in-process run with ``clients.downlink = mode``; its result and what its downlink sent."""
    import stamen.server.federation as federation
    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    plan = SimulationPlan.from_scenario(load_scenario(scenario, [*overrides, f"clients.downlink={mode}"]))
    original, made = federation.default_downlink, []

    def recording(cfg: Any) -> Recorder:
        made.append(Recorder(original(cfg)))
        return made[-1]

    federation.default_downlink = recording  # type: ignore[assignment]
    try:
        result = run_engine("inprocess", plan)
    finally:
        federation.default_downlink = original  # type: ignore[assignment]
    return result, made[0]


def compare(label: str, scenario: str, overrides: list[str]) -> dict[str, Any]:
    """Full and cached runs of one scenario, side by side."""
    import numpy as np

    (full, rec_full), (cached, rec_cached) = (run(scenario, overrides, m) for m in ("full", "cached"))
    diff = max(float(np.max(np.abs(full.weights[k] - cached.weights[k]))) for k in full.weights)
    model_b = rec_full.full[0]
    patch_b = float(np.median(rec_cached.patch)) if rec_cached.patch else float("nan")
    total_full, total_cached = (sum(r.bytes_down for r in res.rounds) for res in (full, cached))
    row = {
        "scenario": label,
        "model_bytes_per_client": model_b,
        "patch_bytes_median": patch_b,
        "patch_bytes_max": max(rec_cached.patch, default=0),
        "full_sends_cached_run": len(rec_cached.full),
        "patch_sends_cached_run": len(rec_cached.patch),
        "bytes_down_full_run": total_full,
        "bytes_down_cached_run": total_cached,
        "run_ratio_full_over_cached": total_full / total_cached,
        "ratio_model_over_patch_median": model_b / patch_b if rec_cached.patch and patch_b else float("nan"),
        "bytes_down_per_round_full": [r.bytes_down for r in full.rounds],
        "bytes_down_per_round_cached": [r.bytes_down for r in cached.rounds],
        "bytes_up_per_round": [r.bytes_up for r in cached.rounds],
        "max_abs_weight_diff": diff,
        "final_accuracy": [full.rounds[-1].accuracy, cached.rounds[-1].accuracy],
    }
    print(
        f"{label:26s} model {model_b / 1e6:7.2f} MB/client | patch (median) {patch_b / 1e6:7.3f} MB "
        f"({row['ratio_model_over_patch_median']:6.1f}x less) | run total {total_full / 1e6:8.1f} -> "
        f"{total_cached / 1e6:7.1f} MB ({row['run_ratio_full_over_cached']:.1f}x) | max |diff| {diff:g}",
        flush=True,
    )
    return row


def main() -> None:
    p = parser(__doc__, quick="minilm-tiny, 3 rounds, 3 clients", out="lora_downlink.json")
    p.add_argument("--rounds", type=int, default=4, help="rounds per run (default: 4, the scenarios')")
    args = p.parse_args()
    prov = Provenance.capture()
    overrides = [*QUICK, "rounds=3"] if args.quick else [f"rounds={args.rounds}"]
    rows = []
    for label, (name, extra) in SCENARIOS.items():
        quick = QUICK_EXTRA.get(name, ()) if args.quick else ()
        rows.append(compare(label, name, [*overrides, *extra, *quick]))
    prov.write(out_path(args), {"overrides": overrides, "rows": rows, "machine_loaded": True})


if __name__ == "__main__":
    main()
