"""Server-mode ``bristle`` rule: the integrator run by the server on its validation features."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import CodecSpec, TensorInfo, encode_update, keys, model_hash
from stamen.server.aggregators import create
from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.bristle import BristleRule, changed_rows, output_segment
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.offline import aggregate_replies
from stamen.server.driver.types import Reply
from stamen.task.bristle.integrator import integrate
from stamen.task.bristle.peer import center_rows

C, F = 3, 4
RNG = np.random.default_rng(0)
FEATS = (np.eye(F, dtype=np.float32)[[0, 1, 2, 0, 1, 2]] + 0.1 * RNG.normal(size=(6, F))).astype(np.float32)
LABELS = np.array([0, 1, 2, 0, 1, 2])
GOOD = np.zeros((C, F), np.float32)
GOOD[[0, 1, 2], [0, 1, 2]] = 2.0  # a perfect classifier of the validation set


def test_segment_and_changed_rows_by_hand() -> None:
    table = (TensorInfo("frozen", (5,), "float32"), TensorInfo("head.weight", (C, F), "float32"))
    assert output_segment(table) == (5, 17, (C, F))
    assert output_segment(table, "head.weight") == (5, 17, (C, F))
    with pytest.raises(ValueError, match="output layer"):
        output_segment(table[:1])
    d = np.zeros((2, C, F))
    d[0, 1, 2] = 0.5
    d[1, [0, 2]] = 1.0
    assert changed_rows(d).tolist() == [1, 2]


def test_rule_through_round_aggregator_matches_integrator() -> None:
    base = {"frozen": np.ones(5, np.float32), "head.weight": np.zeros((C, F), np.float32)}
    rule = create("bristle", seed=0)
    assert isinstance(rule, BristleRule)
    rule.set_validation(FEATS, LABELS)
    h = model_hash(base)
    replies = []
    deltas = [GOOD.copy(), GOOD.copy(), -GOOD]
    deltas[1][2] = 0.0  # this client holds classes 0 and 1 only -> class count 2
    for i, d in enumerate(deltas):
        env = encode_update(
            {"frozen": np.zeros(5, np.float32), "head.weight": d},
            CodecSpec.parse("dense"),
            base_hash=h,
            version=1,
            sender=f"c{i}",
            rng=np.random.default_rng(0),
        )
        replies.append(Reply(f"c{i}", envelope=env, metrics={keys.NUM_EXAMPLES: 10}))
    new, stats = aggregate_replies(base, replies, rule, policy=CollectPolicy(norm_ratio=0))
    assert stats.accepted == 3
    assert new is not None
    np.testing.assert_array_equal(new["frozen"], 1.0)
    expected = integrate(np.zeros((C, F), np.float32), np.stack(deltas), FEATS, LABELS, [3, 2, 3])
    np.testing.assert_allclose(new["head.weight"], center_rows(expected.layer), rtol=1e-6, atol=1e-7)
    assert rule.last is not None and rule.last.class_weights[2].sum() == 0.0  # the inverted client
    assert np.argmax(FEATS @ new["head.weight"].T, 1).tolist() == LABELS.tolist()


def test_rule_pinned_value() -> None:
    rng = np.random.default_rng(5)
    rule = BristleRule(num_closest=2, num_random=1, seed=3)
    rule.set_validation(FEATS, LABELS)
    table = (TensorInfo("head.weight", (C, F), "float32"),)
    rule.begin_round(RoundContext(1, table, rng.normal(size=C * F).astype(np.float32)))
    out = rule(rng.normal(size=(5, C * F)).astype(np.float32))
    assert float(np.abs(out).sum()) == pytest.approx(PINNED, rel=1e-6)


PINNED = 3.4688503742218018


def test_rule_needs_bind_and_validation() -> None:
    rule = BristleRule()
    with pytest.raises(ValueError, match="begin_round"):
        rule(np.zeros((1, C * F), np.float32))
    rule.begin_round(
        RoundContext(1, (TensorInfo("head.weight", (C, F), "float32"),), np.zeros(C * F, np.float32))
    )
    with pytest.raises(ValueError, match="set_validation"):
        rule(np.zeros((1, C * F), np.float32))
    with pytest.raises(ValueError, match="validation"):
        rule.set_validation(FEATS, LABELS[:2])
    with pytest.raises(ValueError, match="num_closest"):
        BristleRule(num_closest=0, num_random=0)
    with pytest.raises(ValueError, match="mode"):
        create("bristle", mode="ring")
    assert create("bristle", mode="peer").mode == "peer"
