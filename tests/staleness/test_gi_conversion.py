"""Tests of the gradient-inversion conversion (Wang & Gao) and the ``gi`` policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from stamen.protocols import ValidationError
from stamen.server.staleness import ModelVersions, compensation
from stamen.server.staleness.gi_conversion import (
    GIConfig,
    Reconstruction,
    UnrolledSGD,
    _match_masks,
    convert_stale_update,
    soft_cross_entropy,
)
from stamen.server.staleness.gi_policy import GIConversionPolicy
from stamen.server.staleness.gi_switch import SwitchBack, oracle_errors

D, H, C, N = 8, 8, 3, 8
PROC = UnrolledSGD(steps=3, lr=0.2)


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _run(
    model: nn.Module, w: dict[str, np.ndarray], x: torch.Tensor, y: torch.Tensor, proc: UnrolledSGD = PROC
):
    params = {k: torch.tensor(w[k]) for k, _ in model.named_parameters()}
    return {k: v.numpy() for k, v in proc(model, params, x, y, create_graph=False).items()}


def _setting(seed: int = 0):
    """Client data of class 1; the global model drifted by training on classes 0 and 2 (the stale
    client's class is missing from the drift: the paper's intertwined heterogeneity)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, C))
    stale = _weights(model)
    gen = torch.Generator().manual_seed(seed + 100)
    centers = 1.5 * torch.randn(C, D, generator=gen)

    def data(cls: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = centers[cls] + 0.5 * torch.randn(m, D, generator=gen)
        return x, nn.functional.one_hot(torch.full((m,), cls), C).float()

    (xa, ya), (xb, yb) = data(0, 16), data(2, 16)
    drift = _run(model, stale, torch.cat([xa, xb]), torch.cat([ya, yb]), UnrolledSGD(steps=20, lr=0.5))
    current = {k: stale[k] + drift[k] for k in stale}
    x, y = data(1, N)
    return model, stale, current, x, y


def test_unrolled_sgd_hand_computed_logistic_step() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x = torch.tensor([[1.0, 2.0]])
    y = torch.tensor([[1.0, 0.0]])
    # logits 0 -> softmax (0.5, 0.5); grad_W = (p - y)^T x = [[-0.5, -1], [0.5, 1]], grad_b = [-0.5, 0.5]
    delta = UnrolledSGD(steps=1, lr=0.1)(model, dict(model.named_parameters()), x, y, create_graph=False)
    np.testing.assert_allclose(delta["weight"].numpy(), [[0.05, 0.1], [-0.05, -0.1]], rtol=1e-6)
    np.testing.assert_allclose(delta["bias"].numpy(), [0.05, -0.05], rtol=1e-6)
    assert soft_cross_entropy(torch.zeros(1, 2), y).item() == pytest.approx(np.log(2))


def test_conversion_recovers_a_delta_close_to_the_unstale_one() -> None:
    """Measured (torch 2.13 CPU, seed 0): e_gi = 0.313 e_stale (seeds 1, 2: 0.50, 0.63); asserted
    <= 0.5. The server's plug-in estimates: shift_l1 = 1.03 e_stale (1.12, 1.14), residual_l1 =
    0.19 e_gi (0.21, 0.23) -- the inversion residual is optimistic about e_gi."""
    model, stale, current, x, y = _setting(0)
    d_stale, d_true = _run(model, stale, x, y), _run(model, current, x, y)
    conv = convert_stale_update(
        model, ModelVersions(current, stale, 40), d_stale, PROC,
        input_shape=(D,), num_classes=C, config=GIConfig(num_samples=8, iterations=200, lr=0.1),
    )  # fmt: skip
    e_gi, e_stale = oracle_errors(d_true, conv.delta, d_stale)
    assert e_gi <= 0.5 * e_stale
    assert 0.7 * e_stale <= conv.shift_l1 <= 1.4 * e_stale
    assert conv.residual_l1 < conv.reconstruction.loss_trace[0]  # the inversion made progress
    # pinned (deterministic from the seeds on CPU)
    assert e_gi / e_stale == pytest.approx(0.3125, abs=0.02)
    assert conv.residual_l1 == pytest.approx(0.379, rel=0.05)


def test_a_perfect_reconstruction_gives_the_unstale_delta_and_exact_estimates() -> None:
    """With D_rec = the client's real data (warm start, a negligible step), the conversion returns
    the oracle delta and the server-side estimates equal the oracle errors: the plug-in argument
    of ``gi_switch`` holds exactly, and the versions are wired the right way round."""
    model, stale, current, x, y = _setting(0)
    d_stale, d_true = _run(model, stale, x, y), _run(model, current, x, y)
    perfect = Reconstruction(x.clone(), 40.0 * y, 0.0, {}, ())  # softmax(40 * one-hot) = one-hot to 1e-17
    cfg = GIConfig(num_samples=N, iterations=1, lr=1e-12, signed=False, lr_decay=False)
    conv = convert_stale_update(
        model,
        ModelVersions(current, stale, 40),
        d_stale,
        PROC,
        input_shape=(D,),
        num_classes=C,
        config=cfg,
        init=perfect,
    )
    e_gi, e_stale = oracle_errors(d_true, conv.delta, d_stale)
    assert e_gi < 1e-5 * e_stale
    assert conv.residual_l1 < 1e-5 * e_stale
    assert conv.shift_l1 == pytest.approx(e_stale, rel=1e-5)


def test_conversion_is_deterministic_and_keeps_non_parameter_tensors() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.Linear(H, C))
    stale = _weights(model)
    current = {k: v + np.float32(0.1) if v.dtype == np.float32 else v for k, v in stale.items()}
    delta = {k: np.full(v.shape, 0.01, np.float32) for k, v in stale.items()}
    cfg = GIConfig(num_samples=4, iterations=5, lr=0.1)
    versions = ModelVersions(current, stale, 3)
    a = convert_stale_update(model, versions, delta, PROC, input_shape=(D,), num_classes=C, config=cfg)
    b = convert_stale_update(model, versions, delta, PROC, input_shape=(D,), num_classes=C, config=cfg)
    assert a.delta.keys() == delta.keys()
    for k in delta:
        np.testing.assert_array_equal(a.delta[k], b.delta[k])
    np.testing.assert_array_equal(a.delta["1.running_mean"], delta["1.running_mean"])  # buffer: stale delta
    assert not np.allclose(a.delta["0.weight"], delta["0.weight"])
    assert model.training  # the model's mode is restored


def test_gi_policy_identity_at_tau_zero_then_converts_then_passes_through() -> None:
    model, stale, current, x, y = _setting(0)
    d_stale = _run(model, stale, x, y)
    policy = compensation.create(
        "gi", model=model, input_shape=(D,), num_classes=C, procedure=PROC,
        config=GIConfig(num_samples=4, iterations=3, lr=0.1), switch=SwitchBack(lag=1), warm_start_clients=1,
    )  # fmt: skip
    assert isinstance(policy, GIConversionPolicy)
    same = policy(d_stale, 0, ModelVersions(stale, stale, 0))
    assert all(np.array_equal(same[k], d_stale[k]) for k in d_stale)
    converted = policy(d_stale, 40, ModelVersions(current, stale, 40), client=7)
    assert not np.allclose(converted["0.weight"], d_stale["0.weight"])
    policy(d_stale, 40, ModelVersions(current, stale, 40), client=8)
    assert policy.state()["warm_cached"] == 1 and policy.last is not None
    policy.switch.switch_at = 41  # as if the rule had fired
    passed = policy(d_stale, 40, ModelVersions(current, stale, 41))
    assert all(np.array_equal(passed[k], d_stale[k]) for k in d_stale)
    assert policy.counts == {"converted": 2, "passed_through": 1, "fresh": 1, "failed": 0}
    with pytest.raises(ValueError, match="needs the current and the stale base model"):
        policy(d_stale, 3)


class _DivergingRerun(UnrolledSGD):
    """Differentiable during the inversion, NaN afterwards (a diverged conversion)."""

    def __call__(self, model, params, x, targets, *, create_graph):  # type: ignore[no-untyped-def,unused-ignore]
        out = super().__call__(model, params, x, targets, create_graph=create_graph)
        return out if create_graph else {k: torch.full_like(v, float("nan")) for k, v in out.items()}


def test_gi_policy_falls_back_to_the_stale_delta_when_the_conversion_diverges() -> None:
    model, stale, current, x, y = _setting(0)
    d_stale = _run(model, stale, x, y)
    policy = GIConversionPolicy(
        model,
        (D,),
        C,
        procedure=_DivergingRerun(steps=3, lr=0.2),
        config=GIConfig(num_samples=4, iterations=2),
    )
    out = policy(d_stale, 5, ModelVersions(current, stale, 5))
    assert all(np.array_equal(out[k], d_stale[k]) for k in d_stale)
    assert policy.counts["failed"] == 1 and policy.switch.switch_at is None
    assert policy.model is not model  # the policy works on its own copy


def test_inputs_are_validated() -> None:
    model, stale, current, *_ = _setting(0)
    delta = {k: np.zeros_like(v) for k, v in stale.items()}
    with pytest.raises(ValidationError, match="lacks parameter"):
        convert_stale_update(
            model, ModelVersions(current, {"0.weight": stale["0.weight"]}, 1), delta, PROC,
            input_shape=(D,), num_classes=C, config=GIConfig(iterations=1),
        )  # fmt: skip
    cases: list[tuple[dict[str, Any], str]] = [
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"match_fraction": 1.5}, r"match_fraction must be in \(0, 1\]"),
        ({"box": (1.0, 0.0)}, "box must be"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            GIConfig(**bad)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        UnrolledSGD(steps=0)


def test_match_masks_keep_the_largest_entries() -> None:
    target = {"a": torch.tensor([0.1, -5.0, 0.2]), "b": torch.tensor([3.0, 0.0])}
    masks = _match_masks(target, 0.4)  # ceil(0.4 * 5) = 2 entries: -5 and 3
    assert masks is not None
    assert masks["a"].tolist() == [0.0, 1.0, 0.0] and masks["b"].tolist() == [1.0, 0.0]
    assert _match_masks(target, 1.0) is None
