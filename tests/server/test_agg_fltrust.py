"""``fltrust`` (Cao et al., NDSS 2021): trust scores, magnitude normalization, the server update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.protocols import CodecSpec, TensorInfo, encode_update, keys, model_hash
from stamen.server.aggregators import RoundContext, create
from stamen.server.aggregators.fltrust import (
    FLTrustRule,
    fltrust_aggregate,
    softmax_head_update,
    trust_scores,
)
from stamen.server.driver.offline import aggregate_replies
from stamen.server.driver.types import Reply

ROOT = np.array([3.0, 4.0], np.float32)  # ||g_0|| = 5


def test_hand_computed_case() -> None:
    updates = np.array([[1, 0], [0, 2], [-1, 0], [0, 0]], np.float32)
    # cos with (3, 4): 0.6, 0.8, -0.6 -> 0, zero row -> 0; rows rescaled to norm 5: (5, 0), (0, 5)
    np.testing.assert_allclose(trust_scores(updates, ROOT), [0.6, 0.8, 0.0, 0.0], rtol=1e-12)
    out = fltrust_aggregate(updates, ROOT)
    np.testing.assert_allclose(out, [0.6 * 5 / 1.4, 0.8 * 5 / 1.4], rtol=1e-6)
    assert out.dtype == np.float32
    # nobody trusted (all opposed, or a zero server update): the round does not move
    np.testing.assert_array_equal(fltrust_aggregate(-updates[:2], ROOT), [0.0, 0.0])
    np.testing.assert_array_equal(fltrust_aggregate(updates, np.zeros(2, np.float32)), [0.0, 0.0])


def test_a_row_of_tiny_norm_does_not_overflow() -> None:
    updates = np.array([[1e-40, 1e-40], [1.0, 1.0]], np.float32)  # rescaling by ~1e40 overflowed float32
    out = fltrust_aggregate(updates, ROOT)
    assert np.isfinite(out).all() and np.linalg.norm(out) <= 5.0 * (1 + 1e-6)


# no subnormals: scaling a 1e-45 row by 0.01 underflows to a zero row, whose trust rightly changes
finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 6), st.just(5)), elements=finite),
    arrays(np.float32, (5,), elements=finite),
    st.floats(0.01, 100.0),
)
def test_properties(updates: np.ndarray, root: np.ndarray, scale: float) -> None:
    out = fltrust_aggregate(updates, root)
    # a convex combination of rows rescaled to ||g_0||: never longer than the server update
    assert np.linalg.norm(out) <= np.linalg.norm(root.astype(np.float64)) * (1 + 1e-5) + 1e-6
    # magnitudes do not matter: scaling one client's update changes nothing
    scaled = updates.copy()
    scaled[0] *= np.float32(scale)
    np.testing.assert_allclose(fltrust_aggregate(scaled, root), out, rtol=1e-4, atol=1e-4)
    # clients without positive trust have no influence at all
    keep = trust_scores(updates, root) > 0
    if keep.any():
        np.testing.assert_allclose(fltrust_aggregate(updates[keep], root), out, rtol=1e-5, atol=1e-5)


def test_head_update_matches_torch_adam() -> None:
    """The server's root training equals torch's Adam(weight_decay) on the same minibatches."""
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(12, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 12)
    head = rng.normal(scale=0.1, size=(4, 6)).astype(np.float32)
    delta = softmax_head_update(head, feats, labels, (7, 5), (0.01, 0.005), np.random.default_rng(9))
    order_rng, batches, order = np.random.default_rng(9), [], np.empty(0, np.int64)
    for _ in range(7):  # the same epoch-by-epoch permutation and short last batch
        if order.size == 0:
            order = order_rng.permutation(12)
        batches.append(order[:5])
        order = order[5:]
    w = torch.nn.Parameter(torch.tensor(head, dtype=torch.float64))
    opt = torch.optim.Adam([w], lr=0.01, weight_decay=0.005)
    x, y = torch.tensor(feats, dtype=torch.float64), torch.tensor(labels)
    for idx in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x[idx] @ w.T, y[idx]).backward()
        opt.step()
    np.testing.assert_allclose(delta, w.detach().numpy() - head, rtol=1e-6, atol=1e-9)


def test_pinned_rule_through_round_aggregator() -> None:
    """End to end: the round driver binds the round, the rule trains g_0 on the root data."""
    rng = np.random.default_rng(0)
    c, f = 3, 4
    feats = (np.eye(f, dtype=np.float32)[[0, 1, 2] * 4] + 0.1 * rng.normal(size=(12, f))).astype(np.float32)
    labels = np.array([0, 1, 2] * 4)
    base = {"frozen": np.ones(2, np.float32), "head.weight": np.zeros((c, f), np.float32)}
    rule = create("fltrust", root_lr=0.1, root_steps=6, root_batch_size=4, root_weight_decay=0.0, seed=0)
    assert isinstance(rule, FLTrustRule)
    rule.set_validation(feats, labels)
    good = np.zeros((c, f), np.float32)
    good[[0, 1, 2], [0, 1, 2]] = 1.0
    h = model_hash(base)
    replies = []
    for i, d in enumerate([good, 3 * good, -10 * good]):  # the last one is an attacker
        env = encode_update(
            {"frozen": np.zeros(2, np.float32), "head.weight": d},
            CodecSpec.parse("dense"),
            base_hash=h,
            version=1,
            sender=f"c{i}",
            rng=np.random.default_rng(0),
        )
        metrics = {keys.NUM_EXAMPLES: 10 if i < 2 else 10**6}  # counts are ignored
        replies.append(Reply(f"c{i}", envelope=env, metrics=metrics, nbytes=len(env)))
    new, stats = aggregate_replies(base, replies, rule, 1.0)
    assert stats.accepted == 3, stats.reasons
    assert new is not None and rule.last_scores is not None
    np.testing.assert_array_equal(new["frozen"], 1.0)
    assert rule.last_scores[2] == 0.0 and rule.last_scores[0] == pytest.approx(rule.last_scores[1])
    # both honest rows rescaled to ||g_0|| along `good`: the new head is ||g_0|| · good / ||good||
    expected = good * rule.last_root_norm / np.linalg.norm(good)
    np.testing.assert_allclose(new["head.weight"], expected, rtol=1e-5)
    assert rule.last_root_norm == pytest.approx(1.64642, abs=1e-4)  # pinned
    assert rule.last_scores[0] == pytest.approx(0.571813, abs=1e-5)  # pinned


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="root_lr"):
        create("fltrust", root_lr=0.0)
    with pytest.raises(ValueError, match="root_steps"):
        create("fltrust", root_steps=0)
    with pytest.raises(ValueError, match="root_weight_decay"):
        create("fltrust", root_weight_decay=-1.0)
    rule = create("fltrust")
    with pytest.raises(ValueError, match="set_validation"):
        rule(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="root data"):
        rule.set_validation(np.ones((3, 2), np.float32), np.zeros(2))
    rule.set_validation(np.ones((3, 5), np.float32), np.zeros(3))
    rule.begin_round(
        RoundContext(1, (TensorInfo("head.weight", (2, 4), "float32"),), np.zeros(8, np.float32))
    )
    with pytest.raises(ValueError, match="do not fit the output layer"):
        rule(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="server update has shape"):
        fltrust_aggregate(np.ones((2, 3), np.float32), ROOT)


def test_custom_root_update() -> None:
    rule = create("fltrust")
    rule.set_root_update(lambda base: np.array([3.0, 4.0], np.float32) - base)
    rule.begin_round(RoundContext(1, (TensorInfo("w", (2,), "float32"),), np.zeros(2, np.float32)))
    np.testing.assert_allclose(
        rule(np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)), [5 * 0.6 / 1.4, 5 * 0.8 / 1.4]
    )


@pytest.mark.slow
def test_fltrust_runs_in_the_engine_with_the_server_held_root_data() -> None:
    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    overrides = ["aggregation.rule=fltrust", "clients.trainer=full", "rounds=2", "eval.every=1"]
    result = run_engine("inprocess", SimulationPlan.from_scenario(load_scenario("bristle", overrides)))
    assert [r.round for r in result.rounds] == [1, 2]
    assert all(r.rejected == 0 and 0.1 < r.accuracy <= 1.0 for r in result.rounds)
