"""``stamen deploy model``: the federation's initial model as an ONNX file for device stores.

A device in ``clients.runtime = "edge"`` holds its model in an edge store and receives signed
deltas against what it holds; it must start from exactly the model the ServerApp starts from. The
ServerApp builds it from the run's scenario (seeded), so the operator exports the same scenario
(and overrides) once, and every device is provisioned from that file (``stamen device init
--model``). The printed model hash must equal the one the ServerApp logs at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stamen.edge.export import export_module
from stamen.protocols import model_hash
from stamen.server.config import ServerConfig
from stamen.task.models import build_model
from stamen.task.weights import get_weights

__all__ = ["export_initial_model"]

FLAT_MODELS = ("mlp", "logreg")  # registry models taking flat (batch, input_dim) inputs


def export_initial_model(scenario: str, overrides: Sequence[str], out: Path) -> str:
    """Write the initial model of ``scenario`` (+ ``overrides``) to ``out`` (``.onnx`` + ``.data``);
    return its model hash. ``ValueError`` for a model an ONNX edge store cannot hold."""
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out}")
    cfg = ServerConfig.from_run_config({"scenario": scenario, "overrides": " ".join(overrides)})
    if cfg.task.model not in FLAT_MODELS or cfg.task.lora.adapter != "none":
        raise ValueError(
            f"model {cfg.task.model!r} cannot be exported for an ONNX device store; use one of {FLAT_MODELS}"
        )
    model = build_model(cfg.task)
    digest = model_hash(get_weights(model))
    out.parent.mkdir(parents=True, exist_ok=True)
    export_module(
        model, cfg.task.input_dim, out, {"stamen.model_id": cfg.task.model_id, "stamen.hash": digest}
    )
    return digest
