"""Sparse backprop: the lean autograd layer (gradients = stock autograd), plan parsing, the
memory model (= measured bytes), and budget selection (fits by construction; pinned choice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.edge.arch import build_model
from stamen.edge.budget import plan_for_budget
from stamen.edge.personalization import PersonalizeConfig, resolve_plan, train_plan
from stamen.edge.plans import PlanSpec, layer_infos, parse_plan, parse_size, resolve_fixed
from stamen.edge.sparse_autograd import LayerConf, pack_bits, sparse_layer, unpack_bits

CNN = {
    "name": "cnn",
    "input_shape": [2, 6, 6],
    "channels": [4, 6],
    "strides": [1, 2],
    "hidden": [8],
    "classes": 3,
}
MLP = {"name": "mlp", "input_shape": [12], "hidden": [16, 8], "classes": 4}


def _data(arch: dict, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = int(np.prod(arch["input_shape"]))
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, arch["classes"], n)


def test_linear_layer_gradients_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    w = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    b = torch.tensor([1.5, -4.0], requires_grad=True)
    # pre-activation W x + b = [1 - 2 + 1.5, 2 + 1 - 4] = [0.5, -1.0] -> ReLU mask [1, 0]
    w_sel = w[:, [1]].clone().requires_grad_(True)  # train input channel 1 only
    y = sparse_layer(x, w, b, w_sel, torch.tensor([1]), LayerConf("linear"))
    assert y.tolist() == [[0.5, 0.0]]
    y.sum().backward()  # dL/dy = [1, 1]
    assert b.grad is not None and w_sel.grad is not None and x.grad is not None
    assert b.grad.tolist() == [1.0, 0.0]  # dL/db = mask
    assert w_sel.grad.tolist() == [[2.0], [0.0]]  # dL/dW[:, 1] = mask * x[1]
    assert x.grad.tolist() == [[1.0, -1.0]]  # dL/dx = mask @ W = row 0 of W


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["conv", "linear"]),
    st.integers(1, 2),
    st.booleans(),
    st.booleans(),
    st.integers(1, 5),
    st.integers(0, 2**16),
)
def test_lean_gradients_equal_stock_autograd(
    kind: str, stride: int, relu: bool, need_x: bool, k: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    cin, cout = 5, 3
    x = torch.randn((2, cin, 5, 4) if kind == "conv" else (2, cin), generator=g)
    w = torch.randn((cout, cin, 3, 3) if kind == "conv" else (cout, cin), generator=g)
    b = torch.randn(cout, generator=g)
    sel = torch.tensor(sorted(torch.randperm(cin, generator=g)[:k].tolist()))
    conf = LayerConf(kind, stride if kind == "conv" else 1, relu)
    # stock autograd on the same layer
    x1, w1, b1 = (
        x.clone().requires_grad_(need_x),
        w.clone().requires_grad_(True),
        b.clone().requires_grad_(True),
    )
    y1 = F.conv2d(x1, w1, b1, stride=conf.stride, padding=1) if kind == "conv" else F.linear(x1, w1, b1)
    y1 = torch.relu(y1) if relu else y1
    up = torch.randn(y1.shape, generator=g)
    (y1 * up).sum().backward()
    # lean path
    x2, b2 = x.clone().requires_grad_(need_x), b.clone().requires_grad_(True)
    w_sel = w.index_select(1, sel).clone().requires_grad_(True)
    y2 = sparse_layer(x2, w, b2, w_sel, sel, conf)
    (y2 * up).sum().backward()
    torch.testing.assert_close(y2, y1.detach())
    torch.testing.assert_close(b2.grad, b1.grad)
    assert w1.grad is not None
    torch.testing.assert_close(w_sel.grad, w1.grad.index_select(1, sel))
    if need_x:
        torch.testing.assert_close(x2.grad, x1.grad)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=70))
def test_bit_packing_roundtrip(bits: list[bool]) -> None:
    mask = torch.tensor(bits, dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-len(bits) // 8)
    assert unpack_bits(packed, (len(bits),)).tolist() == bits
    if len(bits) >= 9:
        assert int(packed[0]) == sum(int(b) << i for i, b in enumerate(bits[:8]))


def test_parse_plans_and_sizes() -> None:
    assert parse_plan("bias") == PlanSpec("bias")
    assert parse_plan("last_k=2") == PlanSpec("last_k", 2)
    assert parse_plan("channels=0.25").text() == "channels=0.25"
    assert parse_plan("budget=2MB") == PlanSpec("budget", 2_000_000)
    assert [parse_size(s) for s in ("40000", "512kB", "1MiB", "1.5KiB")] == [40000, 512000, 2**20, 1536]
    for bad in ("biases", "last_k=0", "last_k=x", "channels=0", "channels=1.5", "budget=lots", "full=1"):
        with pytest.raises(ValueError, match=r"plan|size"):
            parse_plan(bad)


def test_memory_model_by_hand() -> None:
    # CNN 2x6x6 -> conv 4 (6x6) -> conv 6 stride 2 (3x3) -> pool -> fc 8 -> head 3; batch 10
    model = build_model(CNN)
    infos = layer_infos(model)
    assert [(i.in_pos, i.out_pos) for i in infos] == [(36, 36), (36, 9), (1, 1), (1, 1)]
    bias = resolve_fixed(PlanSpec("bias"), model)
    masks = (10 * 4 * 36 + 7) // 8 + (10 * 6 * 9 + 7) // 8 + 10  # 1 bit per element; head has no ReLU
    assert bias.memory_bytes(infos, 10) == masks + 4 * (4 + 6 + 8 + 3) + 10 * (4 * 3 + 8) + 4
    last1 = resolve_fixed(PlanSpec("last_k", 1), model)
    assert last1.memory_bytes(infos, 10) == 4 * 3 + 4 * 10 * 8 + 4 * 3 * 8 + 10 * (4 * 3 + 8) + 4


@pytest.mark.parametrize("arch", [CNN, MLP])
@pytest.mark.parametrize("plan", ["bias", "last_k=1", "last_k=2", "channels=0.5", "budget=3kB"])
def test_memory_model_equals_measured(arch: dict, plan: str) -> None:
    x, y = _data(arch, 40)
    model = build_model(arch, seed=1)
    cfg = PersonalizeConfig(epochs=1, batch_size=8)
    resolved = resolve_plan(parse_plan(plan), model, x, y, cfg)
    stats, _ = train_plan(model, x, y, resolved, cfg)
    assert stats.total_bytes == resolved.memory_bytes(layer_infos(model), 8)


def test_lean_bias_saves_far_less_than_stock() -> None:
    arch = {
        "name": "cnn",
        "input_shape": [3, 16, 16],
        "channels": [16, 32, 32],
        "strides": [1, 1, 2],
        "hidden": [],
        "classes": 10,
    }
    x, y = _data(arch, 32)
    cfg = PersonalizeConfig(epochs=1, batch_size=32)
    full, _ = train_plan(build_model(arch), x, y, resolve_fixed(PlanSpec("full"), build_model(arch)), cfg)
    model = build_model(arch)
    lean, _ = train_plan(model, x, y, resolve_fixed(PlanSpec("bias"), model), cfg)
    # stock autograd keeps fp32 conv inputs / ReLU outputs (4 bytes each), the lean path 1-bit masks
    assert full.total_bytes > 20 * lean.total_bytes


@settings(max_examples=12, deadline=None)
@given(st.integers(300, 60_000), st.sampled_from([CNN, MLP]))
def test_budget_plan_fits_property(budget: int, arch: dict) -> None:
    x, y = _data(arch, 24)
    model = build_model(arch, seed=2)
    cfg = PersonalizeConfig(epochs=1, batch_size=8, probe=16)
    try:
        plan = resolve_plan(PlanSpec("budget", budget), model, x, y, cfg)
    except ValueError as exc:
        assert "too small" in str(exc)
        assert budget < 8 * (4 * arch["classes"] + 8) + 4 + 4 * arch["classes"] + 1
        return
    assert plan.memory_bytes(layer_infos(model), 8) <= budget
    stats, _ = train_plan(model, x, y, plan, cfg)
    assert stats.total_bytes <= budget


def test_budget_selection_pinned() -> None:
    x, y = _data(CNN, 64, seed=3)
    model = build_model(CNN, seed=4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    plan = plan_for_budget(model, xt, yt, budget=6000, batch=16)
    chosen = [(lp.bias, lp.channels) for lp in plan.layers]
    assert plan.memory_bytes(layer_infos(model), 16) <= 6000
    assert chosen == [(True, ()), (True, (2,)), (True, tuple(range(6))), (True, tuple(range(8)))]
    assert plan.memory_bytes(layer_infos(model), 16) == 4524
    assert plan_for_budget(model, xt, yt, budget=10**9, batch=16).first == 0  # room for everything
