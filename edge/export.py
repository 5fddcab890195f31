"""Host side: export an :class:`~stamen.edge.arch.EdgeNet` once, with stable tensor names.

``torch.onnx.export(..., dynamo=True, optimize=False)`` keeps every ``state_dict`` key as an
initializer with its own name and shape; the default ``optimize=True`` and the legacy exporter
fold transposes into renamed tensors and merge initializers with equal values, after which a
delta can no longer be applied per tensor (research/edge.md §1.2). The export asserts that the
names survived, stores every weight as external data (``size_threshold=0``) and records the
architecture spec in the model metadata. Devices never export: they rewrite weights only.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from safetensors.numpy import save_file

from stamen._quiet import quiet_onnx_export

from .arch import ARCH_KEY, EdgeNet

__all__ = ["export_module", "export_onnx", "save_state", "state_of"]


def state_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """float32 numpy copy of a module's ``state_dict`` (state_dict order)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def save_state(model: EdgeNet, path: str | Path, weights: Mapping[str, np.ndarray] | None = None) -> None:
    """Write a safetensors state_dict with the architecture in its metadata.

    ``weights`` overrides the module's own state (same names) when given.
    """
    tensors = dict(weights) if weights is not None else state_of(model)
    save_file(tensors, str(path), metadata={ARCH_KEY: model.spec.dumps()})


def export_onnx(model: EdgeNet, path: str | Path, *, opset: int = 18) -> None:
    """Export ``model`` to ``path`` (+ ``path.data``) for an ONNX edge store.

    Parameters
    ----------
    model : EdgeNet
        The module; exported in eval mode with a dynamic batch dimension and flat inputs
        ``(batch, prod(input_shape))``.
    path : str or Path
        Output ``.onnx`` file; the weights go to ``<name>.data`` beside it.
    opset : int, default 18
        ONNX opset.

    Raises
    ------
    ValueError
        If any ``state_dict`` name is missing from the exported initializers.
    """
    features = int(np.prod(model.spec.input_shape))
    export_module(model, features, path, {ARCH_KEY: model.spec.dumps()}, opset=opset)


def export_module(
    model: torch.nn.Module,
    features: int,
    path: str | Path,
    props: dict[str, str] | None = None,
    *,
    opset: int = 18,
) -> None:
    """Export any module taking flat ``(batch, features)`` inputs with its ``state_dict`` names kept
    as initializers (so per-tensor deltas apply), the weights as external data, ``props`` as model
    metadata. Used for :class:`~stamen.edge.arch.EdgeNet` stores and for a federation's initial model
    (``stamen deploy model``).

    Raises
    ------
    ValueError
        If any ``state_dict`` name is missing from the exported initializers.
    """
    model = model.eval()
    proto = _exported_proto(model, features, opset)
    names = {t.name for t in proto.graph.initializer}
    missing = sorted(set(model.state_dict()) - names)
    if missing:
        raise ValueError(f"export lost the names of {missing[:4]}: the graph cannot take per-tensor deltas")
    if props:
        onnx.helper.set_model_props(proto, props)
    _save_external(proto, Path(path))


def _exported_proto(model: torch.nn.Module, features: int, opset: int) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (eval mode) on ``(batch, features)`` inputs, batch dynamic."""
    example = (torch.zeros(2, features),)
    batch = torch.export.Dim("batch", min=1)
    # the exporter prints progress lines, logs torchvision ops it skips, and warns about its own pytree use
    with contextlib.redirect_stdout(io.StringIO()), quiet_onnx_export():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            optimize=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    if program is None:
        raise ValueError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    return proto


def _save_external(proto: onnx.ModelProto, p: Path) -> None:
    """Save ``proto`` at ``p`` with every tensor in one external file ``<name>.data`` beside it."""
    p.with_name(p.name + ".data").unlink(missing_ok=True)  # onnx refuses to overwrite it
    onnx.save_model(
        proto,
        str(p),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=p.name + ".data",
        size_threshold=0,
    )
