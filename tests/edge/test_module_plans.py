"""Plans on a generic model (minilm-tiny: 2 transformer blocks, width 32, FFN 64, 3 classes): what
each plan trains (hand-counted), the lean partial linear (gradients = stock autograd on 3-D inputs),
measured memory ordering, the budget plan fitting its budget by measurement, and learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stamen.edge.modbudget import measure_plan_bytes
from stamen.edge.modplans import ModulePlan, model_layers, resolve_module_plan
from stamen.edge.personalization import PersonalizeConfig, resolve_plan, train_plan
from stamen.edge.plans import PlanSpec, parse_plan
from stamen.edge.sparse_autograd import LayerConf, sparse_layer
from stamen.task.models import create_model

SEQ = 12
BLOCK = "bert.encoder.layer"


def _tiny(seed: int = 0) -> nn.Module:
    return create_model("minilm-tiny", SEQ, 3, [], seed=seed)


def _texts(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids: [CLS], 8 tokens of which 4 are the class token (2000 + label), the rest noise; pad."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(1000, 1100, (n, SEQ))
    for i in range(n):
        x[i, 1 + rng.permutation(8)[:4]] = 2000 + y[i]
    x[:, 0], x[:, 9:] = 101, 0  # [CLS] ... padding
    return x.astype(np.int64), y.astype(np.int64)


def test_layers_of_a_transformer() -> None:
    layers = model_layers(_tiny())
    assert layers.names == ("prefix", f"{BLOCK}.0", f"{BLOCK}.1", "head")
    assert [len(p) for p in layers.params] == [5, 16, 16, 2]  # 3 embeddings + LN; 6 linears + 2 LN
    assert layers.stack == (1, 2) and layers.head == 3
    assert layers.params[3] == ("classifier.weight", "classifier.bias")


def test_bias_plan_is_bitfit_plus_head() -> None:
    model = _tiny()
    plan = resolve_module_plan(PlanSpec("bias"), model)
    # per block: q, k, v, attention-output, intermediate, output biases + 2 LayerNorm biases = 8
    assert len(plan.params) == 1 + 2 * 8 + 2 and plan.channels == ()
    assert all(n.endswith("bias") for n in plan.params if not n.startswith("classifier"))
    assert "classifier.weight" in plan.params
    # embeddings LN 32; block 4*32 + 32 + 64 + 32 + 32 = 288 (x2); head 3*32 + 3
    assert plan.trainable_elements(model) == 32 + 2 * 288 + 99


def test_last_k_plan_is_last_blocks_plus_head() -> None:
    model = _tiny()
    plan = resolve_module_plan(PlanSpec("last_k", 1), model)
    assert all(n.startswith(f"{BLOCK}.1.") or n.startswith("classifier.") for n in plan.params)
    assert len(plan.params) == 16 + 2
    # q, k, v, o: 4 * (32*32 + 32); 2 LN: 2 * 64; FFN: 32*64 + 64 and 64*32 + 32; head 99
    assert plan.trainable_elements(model) == 4 * 1056 + 128 + 2112 + 2080 + 99
    two = resolve_module_plan(PlanSpec("last_k", 2), model)
    assert len(two.params) == 2 * 16 + 2 and not any(n.startswith("bert.emb") for n in two.params)
    with pytest.raises(ValueError, match="only 2"):
        resolve_module_plan(PlanSpec("last_k", 3), model)


def test_channels_plan_picks_largest_input_columns_of_late_linears() -> None:
    model = _tiny()
    plan = resolve_module_plan(PlanSpec("channels", 0.5), model)
    chans = dict(plan.channels)
    assert sorted(chans) == sorted(
        f"{BLOCK}.1.{m}.weight"
        for m in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    )
    weights = dict(model.named_parameters())
    for name, kept in chans.items():
        norms = weights[name].detach().norm(dim=0).numpy()
        assert len(kept) == weights[name].shape[1] // 2
        assert sorted(kept) == sorted(np.argsort(-norms, kind="stable")[: len(kept)].tolist())


def test_lean_linear_on_3d_input_matches_stock_autograd() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 6, generator=g)
    w, b = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    sel = torch.tensor([1, 4])
    up = torch.randn(2, 5, 4, generator=g)
    x1, w1, b1 = (t.clone().requires_grad_(True) for t in (x, w, b))
    (F.linear(x1, w1, b1) * up).sum().backward()
    x2, b2 = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
    w_sel = w.index_select(1, sel).clone().requires_grad_(True)
    y2 = sparse_layer(x2, w, b2, w_sel, sel, LayerConf("linear", 1, relu=False))
    (y2 * up).sum().backward()
    assert w1.grad is not None
    torch.testing.assert_close(w_sel.grad, w1.grad.index_select(1, sel))
    torch.testing.assert_close(b2.grad, b1.grad)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_training_touches_only_the_plan() -> None:
    x, y = _texts(32)
    model = _tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = resolve_module_plan(PlanSpec("channels", 0.25), model)
    train_plan(model, x, y, plan, PersonalizeConfig(epochs=1, batch_size=8, lr=0.5))
    chans = dict(plan.channels)
    for name, p in model.named_parameters():
        changed = (p.detach() != before[name]).reshape(p.shape[0], -1).any(dim=0) if p.dim() > 1 else None
        if name in chans:
            assert changed is not None and set(np.flatnonzero(changed.numpy())) <= set(chans[name])
        elif name not in plan.params:
            torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
    assert (model.classifier.bias.detach() != before["classifier.bias"]).any()


def test_measured_memory_orders_plans() -> None:
    x, y = _texts(16)
    xb, yb = torch.from_numpy(x), torch.from_numpy(y)
    mem = {}
    for text in ("full", "bias", "last_k=1", "last_k=2", "channels=0.25"):
        model = _tiny()
        plan = resolve_module_plan(parse_plan(text), model)
        mem[text] = measure_plan_bytes(model, plan, xb, yb, 0)
        stats, _ = train_plan(model, x, y, plan, PersonalizeConfig(epochs=1, batch_size=16))
        assert stats.total_bytes == mem[text]  # the training step keeps what the probe step keeps
    assert mem["last_k=1"] < mem["last_k=2"] < mem["full"]
    assert mem["bias"] < mem["channels=0.25"] < mem["full"]
    # the partial linear keeps x[..., S] (a quarter of the features) instead of x
    assert mem["channels=0.25"] < mem["last_k=1"] + mem["bias"]


@pytest.mark.parametrize("budget", [3_000, 12_000, 40_000, 120_000, 10**8])
def test_budget_plan_fits_measured(budget: int) -> None:
    x, y = _texts(40, seed=budget % 7)
    model = _tiny(seed=1)
    cfg = PersonalizeConfig(epochs=1, batch_size=8, probe=16)
    try:
        plan = resolve_plan(PlanSpec("budget", budget), model, x, y, cfg)
    except ValueError as exc:
        assert "too small" in str(exc) and budget <= 3_000
        return
    assert isinstance(plan, ModulePlan) and (plan.params or plan.channels)
    stats, _ = train_plan(model, x, y, plan, cfg)
    assert 0 < stats.total_bytes <= budget
    if budget == 10**8:  # room for everything: backprop reaches the embeddings
        assert any(n.startswith("bert.embeddings") for n in plan.params)


@pytest.mark.parametrize("plan", ["bias", "last_k=1", "channels=0.5", "budget=60kB", "full"])
def test_personalization_lowers_local_loss(plan: str) -> None:
    x, y = _texts(64, seed=5)
    model = _tiny(seed=2)
    cfg = PersonalizeConfig(epochs=6, batch_size=16, lr=0.2, seed=1)
    with torch.no_grad():
        before = float(F.cross_entropy(model.eval()(torch.from_numpy(x)), torch.from_numpy(y)))
    resolved = resolve_plan(parse_plan(plan), model, x, y, cfg)
    _, losses = train_plan(model, x, y, resolved, cfg)
    with torch.no_grad():
        after = float(F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))
    assert losses[-1] < losses[0] and after < 0.5 * before


def test_channels_training_equals_masked_stock_sgd() -> None:
    """The lean partial linear + sync give the same weights as stock SGD with masked gradients."""
    x, y = _texts(16, seed=9)
    lean, stock = _tiny(seed=3), _tiny(seed=3)
    plan = resolve_module_plan(PlanSpec("channels", 0.25), lean)
    cfg = PersonalizeConfig(epochs=1, batch_size=8, lr=0.3, seed=2)
    train_plan(lean, x, y, plan, cfg)
    named = dict(stock.named_parameters())
    masks = {}
    for w, chans in plan.channels:
        masks[w] = torch.zeros_like(named[w])
        masks[w][:, list(chans)] = 1
    for n, p in named.items():
        p.requires_grad_(n in plan.params or n in masks)
    opt = torch.optim.SGD([p for p in named.values() if p.requires_grad], lr=0.3)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    stock.eval()
    for start in (0, 8):
        idx = order[start : start + 8]
        opt.zero_grad()
        F.cross_entropy(stock(torch.from_numpy(x)[idx]), torch.from_numpy(y)[idx]).backward()
        for w, m in masks.items():
            assert named[w].grad is not None
            named[w].grad.mul_(m)
        opt.step()
    for n, p in lean.named_parameters():
        torch.testing.assert_close(p.detach(), named[n].detach(), rtol=1e-5, atol=1e-6)
