"""Test trio for FRL's vote (rankings -> positions -> Borda sum -> initial values reassigned),
plus the ``frl`` rule's engine contract (begin_round, new - base, dropped rows)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import TensorInfo
from stamen.server.aggregators import create
from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.frl import FRLVote, frl_vote, positions, score_segments

INIT = np.array([-2.0, -1.0, 0.5, 3.0], np.float32)


def test_vote_hand_computed() -> None:
    r = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]], np.float32)
    # positions P_u = argsort(R_u): [0,1,2,3], [1,0,3,2], [3,2,1,0]; V = [4, 3, 6, 5]
    np.testing.assert_array_equal(positions(r), [[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]])
    # R_g = argsort(V) = [1, 0, 3, 2]: edge 1 gets -2, edge 0 gets -1, edge 3 gets 0.5, edge 2 gets 3
    np.testing.assert_array_equal(frl_vote(r, INIT), [-1.0, -2.0, 3.0, 0.5])


def test_ties_go_to_the_lower_edge_index() -> None:
    r = np.array([[0, 1], [1, 0]], np.float32)  # V = [1, 1]
    np.testing.assert_array_equal(frl_vote(r, np.array([5.0, 7.0], np.float32)), [5.0, 7.0])


def test_positions_reject_non_permutations() -> None:
    assert positions(np.array([[0, 0, 1]], np.float32)) is None
    assert positions(np.array([[0, 1, 3]], np.float32)) is None
    assert positions(np.array([[0, 1.5, 2]], np.float32)) is None
    assert positions(np.array([[0, np.nan, 2]], np.float32)) is None
    with pytest.raises(ValueError, match="permutation"):
        frl_vote(np.array([[0, 0]], np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="init_sorted"):
        frl_vote(np.array([[0, 1]], np.float32), np.zeros(3, np.float32))


def _slow_vote(r: np.ndarray, init: np.ndarray) -> np.ndarray:
    """The official code's steps with argsort everywhere (utils.py::FRL_Vote)."""
    votes = sum(np.argsort(row, kind="stable") for row in r.astype(np.int64))
    scores = np.zeros(len(init), np.float32)
    for j, edge in enumerate(np.argsort(votes, kind="stable")):
        scores[edge] = init[j]
    return scores


@st.composite
def rankings(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 12))
    u = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(u)]).astype(np.float32)


@settings(max_examples=100, deadline=None)
@given(rankings(), st.integers(0, 2**32 - 1))
def test_vote_matches_slow_reference_and_permutes_init(r: np.ndarray, seed: int) -> None:
    init = np.sort(np.asarray(np.random.default_rng(seed).normal(size=r.shape[1]), dtype=np.float32))
    out = frl_vote(r, init)
    np.testing.assert_array_equal(out, _slow_vote(r, init))
    np.testing.assert_array_equal(np.sort(out), init)  # a permutation of the initial values
    np.testing.assert_array_equal(frl_vote(r[::-1].copy(), init), out)  # order of voters is irrelevant


@settings(max_examples=50, deadline=None)
@given(rankings())
def test_unanimous_vote_reproduces_the_ranking(r: np.ndarray) -> None:
    init = np.arange(r.shape[1], dtype=np.float32) * 0.5 - 1
    one = np.repeat(r[:1], 3, axis=0)
    out = frl_vote(one, init)
    # the edge ranked j-th by everybody receives the j-th smallest initial score
    np.testing.assert_array_equal(out[r[0].astype(np.int64)], init)


def test_vote_pinned_value() -> None:
    rng = np.random.default_rng(2024)
    r = np.stack([rng.permutation(10) for _ in range(5)]).astype(np.float32)
    init = np.linspace(-1, 1, 10, dtype=np.float32)
    out = frl_vote(r, init)
    assert np.argsort(out).tolist() == PINNED_ORDER


PINNED_ORDER = [9, 5, 7, 1, 0, 6, 2, 3, 4, 8]

TABLE = (
    TensorInfo("l.weight", (2, 2), "float32"),
    TensorInfo("l.scores", (2, 2), "float32"),
    TensorInfo("o.scores", (3,), "float32"),
)


def _base() -> np.ndarray:
    return np.array([0.7, -0.7, 0.7, 0.7, -1.0, 3.0, 0.5, -2.0, 0.1, 0.2, 0.3], np.float32)


def test_rule_returns_new_minus_base_on_scores_only() -> None:
    rule = create("frl")
    assert isinstance(rule, FRLVote) and rule.traits.required_server_lr == 1.0
    assert score_segments(TABLE) == [("l.scores", 4, 8), ("o.scores", 8, 11)]
    base = _base()
    rule.begin_round(RoundContext(1, TABLE, base))
    rows = np.zeros((3, 11), np.float32)
    rows[:, 4:8] = [[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]]
    rows[:, 8:11] = [[2, 1, 0], [2, 0, 1], [0, 1, 2]]
    out = rule(rows, np.array([1.0, 5.0, 1.0]))  # weights are ignored: one vote per client
    new = base + out
    np.testing.assert_array_equal(out[:4], 0)
    np.testing.assert_allclose(new[4:8], [-1.0, -2.0, 3.0, 0.5])  # the hand-computed case
    # o.scores: V = [2+1+0, 1+2+1, 0+0+2] = [3, 4, 2] -> R_g = [2, 0, 1]
    np.testing.assert_allclose(new[8:11], [0.2, 0.3, 0.1])


def test_rule_keeps_the_initial_values_across_rounds_and_drops_bad_rows() -> None:
    rule = FRLVote()
    rule.begin_round(RoundContext(1, TABLE, _base()))
    assert rule.init_sorted is not None
    np.testing.assert_array_equal(rule.init_sorted["l.scores"], [-2.0, -1.0, 0.5, 3.0])
    shifted = _base()
    shifted[4:8] = [10.0, 20.0, 30.0, 40.0]  # whatever the current scores, values come from round 1
    rule.begin_round(RoundContext(1, TABLE, shifted))
    rows = np.zeros((2, 11), np.float32)
    rows[0, 4:8], rows[0, 8:11] = [3, 2, 1, 0], [0, 1, 2]
    rows[1, 4:8], rows[1, 8:11] = [0, 0, 0, 1], [0, 1, 2]  # not a ranking: dropped
    new = shifted + rule(rows)
    assert rule.last_dropped == 1
    np.testing.assert_allclose(new[4:8], [3.0, 0.5, -1.0, -2.0])
    all_bad = rule(rows[1:])
    assert rule.last_dropped == 1 and not all_bad.any()


def test_rule_needs_bind_and_scores() -> None:
    with pytest.raises(ValueError, match="begin_round"):
        FRLVote()(np.zeros((1, 11), np.float32))
    with pytest.raises(ValueError, match="supermask"):
        FRLVote().begin_round(RoundContext(1, (TensorInfo("w", (2,), "float32"),), np.zeros(2, np.float32)))
