"""Trainers ``lora``, ``fedsb``, ``sparse`` on the tiny transformer; DP-SGD composes with adapters."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stamen.client.core import encode_delta, local_update
from stamen.client.trainers.sparse import _batches, kept, prune_regrow, top_mask
from stamen.task.data import TaskData
from stamen.task.settings import SparseConfig
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

SPEC = dict(epochs=2, batch_size=8, lr=5e-3, optimizer="adam")


def nonzero(delta: dict[str, np.ndarray]) -> set[str]:
    return {k for k, v in delta.items() if np.any(v != 0)}


def test_lora_update_is_factors_and_head_only(tiny: Callable[..., nn.Module], data: TaskData) -> None:
    model = tiny("lora", rank=2, alpha=4.0)
    start = get_weights(model)
    result = local_update(model, start, data, TrainSpec(trainer="lora", **SPEC), seed=1)
    changed = nonzero(result.delta)
    assert changed == {k for k in start if ".lora_A." in k or ".lora_B." in k or k.startswith("classifier.")}
    dense = encode_delta(result.delta, "dense", base_hash="0" * 64, version=1, sender="c", seed=0)
    sent = encode_delta(result.delta, "lora", base_hash="0" * 64, version=1, sender="c", seed=0)
    zeros = {k: np.zeros_like(v) for k, v in result.delta.items()}
    header = len(encode_delta(zeros, "lora", base_hash="0" * 64, version=1, sender="c", seed=0))
    trainable = sum(result.delta[k].size for k in changed)
    # the factors and the head, exactly: 4 bytes each, +- the per-tensor container entries
    assert abs(len(sent) - header - 4 * trainable) < 32 * len(changed)
    assert len(sent) < len(dense) / 50  # not a dense model
    again = local_update(
        tiny("lora", rank=2, alpha=4.0), start, data, TrainSpec(trainer="lora", **SPEC), seed=1
    )
    for k in start:  # reproducible bit for bit
        np.testing.assert_array_equal(again.delta[k], result.delta[k])


def test_fedsb_update_is_r_and_head_only(tiny: Callable[..., nn.Module], data: TaskData) -> None:
    model = tiny("fedsb", rank=3, alpha=3.0)
    result = local_update(model, get_weights(model), data, TrainSpec(trainer="fedsb", **SPEC), seed=2)
    assert nonzero(result.delta) == {
        k for k in result.delta if ".lora_R." in k or k.startswith("classifier.")
    }
    assert all(
        result.delta[k].shape == (3, 3) for k in result.delta if ".lora_R." in k
    )  # r² numbers per layer


def test_trainers_refuse_the_wrong_model(tiny: Callable[..., nn.Module], data: TaskData) -> None:
    with pytest.raises(ValueError, match="adapter = 'lora'"):
        local_update(tiny(), get_weights(tiny()), data, TrainSpec(trainer="lora"), seed=0)
    sb = tiny("fedsb", rank=2)
    with pytest.raises(ValueError, match="fedsb"):
        local_update(sb, get_weights(sb), data, TrainSpec(trainer="lora"), seed=0)
    lo = tiny("lora", rank=2)
    with pytest.raises(ValueError, match="adapter = 'fedsb'"):
        local_update(lo, get_weights(lo), data, TrainSpec(trainer="fedsb"), seed=0)


def test_sparse_update_has_fixed_density(tiny: Callable[..., nn.Module], data: TaskData) -> None:
    model = tiny()
    spec = TrainSpec(trainer="sparse", **SPEC)
    spec = replace(spec, sparse=SparseConfig(density=0.05, regrow_every=2))
    result = local_update(model, get_weights(model), data, spec, seed=3)
    for name, d in result.delta.items():
        nnz = int(np.count_nonzero(d))
        if "embeddings" in name:
            assert nnz == 0, name  # skipped: never trained
        elif name.startswith("classifier."):
            assert nnz == d.size  # dense head
        else:
            assert 0 < nnz <= kept(d.size, 0.05), name
    payload = encode_delta(result.delta, "lora", base_hash="0" * 64, version=1, sender="c", seed=0)
    assert len(payload) < 0.15 * len(
        encode_delta(result.delta, "dense", base_hash="0" * 64, version=1, sender="c", seed=0)
    )


def test_top_mask_and_prune_regrow_hand_case() -> None:
    assert top_mask(torch.tensor([0.1, -5.0, 3.0, 0.0]).abs(), 2).tolist() == [False, True, True, False]
    mask = torch.tensor([True, True, True, False, False, False])
    delta = torch.tensor([0.5, 0.01, 2.0, 0.0, 0.0, 0.0])
    grads = torch.tensor([9.0, 9.0, 9.0, 0.1, 4.0, 1.0])
    # ζ = 0.4 of k = 3 -> 1 swap: drop entry 1 (smallest active |Δ|), grow entry 4 (largest inactive |Σg|)
    assert prune_regrow(mask, delta, grads, 0.4).tolist() == [True, False, True, False, True, False]
    assert kept(10, 0.01) == 1 and kept(1000, 0.005) == 5 and kept(3, 1.0) == 3


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 60), frac=st.floats(0, 0.99), seed=st.integers(0, 2**16))
def test_prune_regrow_keeps_the_mask_size(n: int, frac: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, n, (1,), generator=g))
    mask = top_mask(torch.rand(n, generator=g), k)
    new = prune_regrow(mask, torch.randn(n, generator=g), torch.randn(n, generator=g), frac)
    assert int(new.sum()) == k


@pytest.mark.parametrize(("kind", "markers"), [("fedsb", (".lora_R.",)), ("lora", (".lora_A.", ".lora_B."))])
def test_dp_sgd_trains_only_the_adapters(
    tiny: Callable[..., nn.Module], data: TaskData, kind: str, markers: tuple[str, ...]
) -> None:
    """DP composes: opacus on a Fed-SB (LoRA) model noises and updates only R (A, B) and the head."""
    model = tiny(kind, rank=2, alpha=2.0)
    spec = TrainSpec(trainer="dp_sgd", epochs=2, batch_size=8, lr=0.05)
    result = local_update(model, get_weights(model), data, spec, seed=4)
    expected = {k for k in result.delta if any(m in k for m in markers) or k.startswith("classifier.")}
    assert nonzero(result.delta) == expected == set(result.trained or ())
    assert result.metrics["epsilon"] > 0


@pytest.mark.parametrize(("kind", "trainer"), [("lora", "lora"), ("fedsb", "fedsb"), ("none", "sparse")])
def test_delta_from_trained_snapshot_equals_the_full_difference(
    tiny: Callable[..., nn.Module], data: TaskData, kind: str, trainer: str
) -> None:
    """Snapshotting only ``trained`` (+ buffers) gives exactly ``local - global`` for every tensor."""
    model = tiny(kind, rank=2, alpha=4.0) if kind != "none" else tiny()
    start = get_weights(model)
    spec = TrainSpec(trainer=trainer, sparse=SparseConfig(density=0.05, warmup=1), **SPEC)
    result = local_update(model, start, data, spec, seed=8)
    end = get_weights(model)
    assert list(result.delta) == list(start)
    for k in start:
        np.testing.assert_array_equal(result.delta[k], end[k] - start[k], err_msg=k)
    assert set(result.trained or ()) < set(start)  # frozen tensors exist and were skipped


def test_sparse_mask_is_the_top_k_of_the_accumulated_warmup_gradient(
    tiny: Callable[..., nn.Module], data: TaskData
) -> None:
    """SpIEL's first selection: per tensor the k entries of largest |Σ g| over the warm-up batches.
    With SGD and no regrow, the update's support must lie inside that mask (and fill most of it)."""
    model, seed = tiny(), 11
    spec = TrainSpec(
        trainer="sparse",
        epochs=1,
        batch_size=8,
        lr=1e-2,
        optimizer="sgd",
        sparse=SparseConfig(density=0.05, warmup=3, regrow_fraction=0.0),
    )
    ref = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # local_update seeds the default generator the same way (dropout)
        ref.train()
        for p in ref.bert.embeddings.parameters():
            p.requires_grad_(False)
        for xb, yb in _batches(data, spec, seed)[:3]:
            nn.functional.cross_entropy(ref(xb), yb).backward()  # grads accumulate in .grad
    result = local_update(model, get_weights(model), data, spec, seed=seed)
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    checked = 0
    for name, g in grads.items():
        if name.startswith("classifier."):
            continue
        expected = top_mask(g.abs(), kept(g.numel(), 0.05)).numpy()
        support = result.delta[name] != 0
        assert not np.any(support & ~expected), name
        assert support.sum() >= 0.8 * expected.sum(), name
        checked += 1
    assert checked > 10
