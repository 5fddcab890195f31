"""LoRA and LoRA-SB layers: exact merge, freezing, names, Fed-SB initialization."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stamen.task.models.lora import (
    LoRALinear,
    LoRASBLinear,
    fedsb_init,
    merge_adapters,
    trainable_names,
)
from stamen.task.settings import LoRAConfig
from stamen.task.spec import TaskSpec


def test_hand_computed_lora_forward() -> None:
    """W = [[1, 2]], b = [0.5], A = [[1, -1]], B = [[3]], α/r = 2: h = W x + b + 2·B A x."""
    base = nn.Linear(2, 1)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 2.0]]))
        base.bias.copy_(torch.tensor([0.5]))
    layer = LoRALinear(base, rank=1, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.tensor([[1.0, -1.0]]))
        layer.lora_B.weight.copy_(torch.tensor([[3.0]]))
    x = torch.tensor([[2.0, 1.0]])
    # W x + b = 4.5; A x = 1; B A x = 3; scaled by α/r = 2 -> 6; total 10.5
    assert layer(x).item() == pytest.approx(10.5)
    torch.testing.assert_close(layer.delta_weight(), torch.tensor([[6.0, -6.0]]))
    merged = merge_adapters(nn.Sequential(layer))
    assert type(merged[0]) is nn.Linear
    assert merged[0](x).item() == pytest.approx(10.5)


def test_new_adapter_is_a_no_op_and_base_is_frozen() -> None:
    base = nn.Linear(5, 4)
    layer = LoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), base(x))  # B = 0
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert float(layer.lora_scale) == 2.0


@settings(max_examples=15, deadline=None)
@given(rank=st.integers(1, 6), alpha=st.floats(0.5, 64), seed=st.integers(0, 2**16), sb=st.booleans())
def test_merged_model_equals_adapted_model(rank: int, alpha: float, seed: int, sb: bool) -> None:
    torch.manual_seed(seed)
    cls = LoRASBLinear if sb else LoRALinear
    layer = cls(nn.Linear(7, 6), rank=rank, alpha=alpha)
    with torch.no_grad():
        for p in (layer.lora_A.weight, layer.lora_B.weight):
            p.normal_()
        if isinstance(layer, LoRASBLinear):
            layer.lora_R.weight.normal_()
    x = torch.randn(4, 7)
    merged = merge_adapters(nn.Sequential(layer))[0]
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-4)
    expected = layer.weight.double() + layer.delta_weight().double()  # W + (α/r) B [R] A
    # merged.weight is float32: one rounding of values up to a few hundred (alpha/r up to 64)
    torch.testing.assert_close(merged.weight.double(), expected, rtol=1e-6, atol=1e-5)


def test_attach_freezes_everything_but_adapters_and_head(tiny: Callable[..., nn.Module]) -> None:
    plain = tiny()
    model = tiny("lora", rank=2, alpha=4.0)
    names = trainable_names(model)
    assert names and all(".lora_A." in n or ".lora_B." in n or n.startswith("classifier.") for n in names)
    assert sum(".lora_A." in n for n in names) == 4  # 2 layers x (query, value)
    # base names are unchanged, the adapters only add keys
    assert set(plain.state_dict()) < set(model.state_dict())
    sb = tiny("fedsb", rank=3, alpha=3.0)
    assert all(".lora_R." in n or n.startswith("classifier.") for n in trainable_names(sb))


def test_bad_configs_name_the_key(tiny: Callable[..., nn.Module]) -> None:
    with pytest.raises(ValueError, match=r"lora\.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match=r"lora\.adapter"):
        LoRAConfig(adapter="qlora")
    with pytest.raises(ValueError, match=r"lora\.targets"):
        tiny("lora", targets=("nonexistent",))
    with pytest.raises(ValueError, match=r"lora\.rank must be in"):
        tiny("lora", rank=33)  # tiny width is 32


def test_the_lora_section_is_the_adapter_config() -> None:
    """One class from the TOML to the model (no getattr defaults, no duplicate config class)."""
    cfg = TaskSpec.from_config(
        {"task.lora.adapter": "fedsb", "task.lora.rank": 4, "task.lora.targets": ["query"]}
    ).lora
    assert isinstance(cfg, LoRAConfig)
    assert (cfg.adapter, cfg.rank, cfg.alpha, cfg.targets) == ("fedsb", 4, 16.0, ("query",))
    assert cfg.scale == 4.0 and LoRAConfig().adapter == "none"


def test_fedsb_init_hand_case() -> None:
    """step = diag(3, 2, 1) (out = in = 3), r = 2: B R A is the rank-2 truncation diag(3, 2, 0)."""
    layer = LoRASBLinear(nn.Linear(3, 3), rank=2, alpha=2.0)
    fedsb_init(layer, torch.diag(torch.tensor([3.0, 2.0, 1.0])))
    torch.testing.assert_close(layer.lora_R.weight, torch.diag(torch.tensor([3.0, 2.0])))
    product = layer.lora_B.weight @ layer.lora_R.weight @ layer.lora_A.weight
    torch.testing.assert_close(product, torch.diag(torch.tensor([3.0, 2.0, 0.0])), atol=1e-6, rtol=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), r=st.integers(1, 4))
def test_fedsb_init_is_the_truncated_svd(seed: int, r: int) -> None:
    step = torch.from_numpy(np.random.default_rng(seed).normal(size=(6, 5))).float()
    layer = LoRASBLinear(nn.Linear(5, 6), rank=r, alpha=float(r))
    fedsb_init(layer, step)
    a, b = layer.lora_A.weight.double(), layer.lora_B.weight.double()
    torch.testing.assert_close(
        a @ a.T, torch.eye(r, dtype=torch.float64), atol=1e-5, rtol=0
    )  # orthonormal rows
    torch.testing.assert_close(b.T @ b, torch.eye(r, dtype=torch.float64), atol=1e-5, rtol=0)
    u, s, vt = torch.linalg.svd(step.double())
    best = (u[:, :r] * s[:r]) @ vt[:r]  # Eckart-Young: the best rank-r approximation
    torch.testing.assert_close(b @ layer.lora_R.weight.double() @ a, best, atol=1e-5, rtol=0)


def test_fedsb_attach_is_deterministic_and_pinned(tiny: Callable[..., nn.Module]) -> None:
    one, two = tiny("fedsb", rank=4, alpha=4.0), tiny("fedsb", rank=4, alpha=4.0)
    for (k, v), (k2, v2) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    layer = one.get_submodule("bert.encoder.layer.0.attention.self.query")
    assert isinstance(layer, LoRASBLinear)
    # R0 = diag(S_r) of -lr·sign(g) (32 x 32 sign matrix, lr 5e-4): pinned top singular value
    assert float(layer.lora_R.weight[0, 0].detach()) == pytest.approx(PINNED_R00, rel=1e-4)


PINNED_R00 = 0.010987915
