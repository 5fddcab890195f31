"""Supermask layer (edge-popup as in the FRL code): frozen signed-constant weights, top-k |score|
mask with a straight-through gradient, and the signed-score edge ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stamen.task.models import create_model
from stamen.task.models.supermask import MaskedLinear, edge_ranking, is_score_tensor, kept_edges


def _layer(scores: list[list[float]], keep: float = 0.5) -> MaskedLinear:
    layer = MaskedLinear(2, 2, keep)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor(scores))
    return layer


def test_forward_uses_top_half_of_abs_scores_by_hand() -> None:
    # |S| = [[0.1, 3], [2, 0.5]] -> keep the two largest: (0,1) and (1,0)
    layer = _layer([[0.1, -3.0], [2.0, -0.5]])
    c = math.sqrt(2) / math.sqrt(2)  # gain / sqrt(fan_in) = 1 for fan_in = 2
    w = layer.weight.detach()
    assert torch.allclose(w.abs(), torch.full((2, 2), c))
    x = torch.tensor([[1.0, 10.0]])
    expected = torch.tensor([[w[0, 1] * 10.0, w[1, 0] * 1.0]])
    assert torch.allclose(layer(x), expected)


def test_straight_through_gradient_is_sign_times_upstream() -> None:
    layer = _layer([[0.1, -3.0], [2.0, -0.5]])
    x = torch.tensor([[1.0, 2.0]])
    layer(x).sum().backward()
    # d out_i / d M_ij = W_ij x_j ; STE to |S| then d|S|/dS = sign(S)
    g = layer.weight.detach() * x
    assert layer.scores.grad is not None
    assert torch.allclose(layer.scores.grad, g * torch.sign(layer.scores.detach()))
    assert layer.weight.grad is None and not layer.weight.requires_grad


def test_kept_edges_matches_the_code_rounding() -> None:
    assert [kept_edges(n, 0.5) for n in (1, 2, 3, 10, 11)] == [1, 1, 2, 5, 6]
    assert kept_edges(7, 1.0) == 7
    with pytest.raises(ValueError, match="keep"):
        MaskedLinear(2, 2, keep=0.0)


def test_edge_ranking_ascending_signed_scores() -> None:
    assert edge_ranking(np.array([0.3, -1.0, 2.0, 0.0])).tolist() == [1, 3, 0, 2]
    assert edge_ranking(np.array([[1.0, 1.0], [0.0, 1.0]])).tolist() == [2, 0, 1, 3]  # stable ties


def test_model_registered_state_dict_and_determinism() -> None:
    a = create_model("supermask_mlp", 8, 3, (5,), seed=7)
    b = create_model("supermask_mlp", 8, 3, (5,), seed=7)
    names = list(a.state_dict())
    assert names == ["net.0.weight", "net.0.scores", "net.2.weight", "net.2.scores"]
    assert [is_score_tensor(n) for n in names] == [False, True, False, True]
    for k in names:
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])
    assert [p.shape for p in a.parameters() if p.requires_grad] == [torch.Size([5, 8]), torch.Size([3, 5])]
    w = a.state_dict()["net.0.weight"]
    assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2) / math.sqrt(8)))


def test_pinned_initial_scores() -> None:
    m = create_model("supermask_mlp", 4, 2, (3,), seed=0)
    s = m.state_dict()["net.0.scores"].numpy()
    assert s.shape == (3, 4)
    np.testing.assert_allclose(float(s.sum()), PINNED_SCORE_SUM, rtol=1e-6)


PINNED_SCORE_SUM = -0.187369704246521
