"""Test trio for Bristle's integrator: a hand-computed case from the paper's formulas, a property
test against a loop-by-loop port of ``Bristle.kt`` (dicts, one class at a time), pinned values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.task.bristle.integrator import (
    certainty,
    class_scores,
    f1_per_class,
    integrate,
    score_weight,
    select_classes,
)

# one-hot features: a layer maps feature j to class argmax_c layer[c, j]
X = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
Y = np.array([0, 0, 1, 1])  # familiar classes {0, 1}; class 2 is foreign
OWN = np.array([[1, 0, 1], [0, 1, 0], [0, 0, -1]], np.float32)  # predicts [0, 0, 1, 0]
PEER_A = np.array([[1, 0, 0], [0, 1, 1], [0.5, 0.5, 0]], np.float32)  # predicts [0, 0, 1, 1]
PEER_B = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)  # predicts [1, 1, 0, 2]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_f1_by_hand() -> None:
    # own: class 0 TP 2, FP 1, FN 0 -> 4/5; class 1 TP 1, FP 0, FN 1 -> 2/3
    np.testing.assert_allclose(f1_per_class(np.array([0, 0, 1, 0]), Y, [0, 1]), [0.8, 2 / 3])
    np.testing.assert_allclose(f1_per_class(np.array([1, 1, 0, 2]), Y, [0, 1]), [0.0, 0.0])


def test_integrate_hand_computed() -> None:
    res = integrate(OWN, np.stack([PEER_A, PEER_B]), X, Y)
    assert res.familiar == (0, 1)
    np.testing.assert_allclose(res.own_f1, [0.8, 2 / 3])
    np.testing.assert_allclose(res.peer_f1, [[1.0, 1.0], [0.0, 0.0]])
    # peer A: diff = 10 |1 - 0.8| = 2 -> 2^(3.8); 10 |1 - 2/3| = 10/3 -> (10/3)^(3 + 2/3)
    s0, s1 = 2.0**3.8, (10 / 3) ** (3 + 2 / 3)
    w0, w1 = 10 * _sig(s0 / 100) - 4, 10 * _sig(s1 / 100) - 4  # certainty = 1 - 0 = 1
    wa = 10 * _sig((s0 + s1) / 100) - 4
    assert (w0, w1, wa) == pytest.approx((1.34766, 2.95606, 3.24271), abs=1e-5)
    # peer B: F1 0 < own -> -8^(4.8) bounded at -100 -> 10 sigmoid(-1) - 4 < 0 -> 0; certainty 0
    np.testing.assert_allclose(res.class_weights, [[w0, w1, 0.0], [0.0, 0.0, 0.0]], rtol=1e-12)
    np.testing.assert_allclose(res.foreign_weights, [wa, 0.0], rtol=1e-12)
    np.testing.assert_allclose(res.certainty, [1.0, 0.0])
    expected = np.stack(
        [
            (OWN[0] + w0 * PEER_A[0]) / (1 + w0),
            (OWN[1] + w1 * PEER_A[1]) / (1 + w1),
            (OWN[2] + wa * PEER_A[2] + 0.0 * PEER_B[2]) / (1 + wa),
        ]
    )
    np.testing.assert_allclose(res.layer, expected, rtol=1e-6)


def test_scores_weights_and_certainty_by_hand() -> None:
    np.testing.assert_allclose(class_scores(np.array([0.9]), np.array([0.5]), True), [4.0**3.5])
    np.testing.assert_allclose(class_scores(np.array([0.1]), np.array([0.5]), False), [-(4.0**4.5)])
    np.testing.assert_allclose(class_scores(np.array([0.1]), np.array([0.5]), True), [-100.0])
    np.testing.assert_allclose(class_scores(np.array([0.5]), np.array([0.5]), True), [0.0])
    np.testing.assert_allclose(score_weight(np.array([0.0, -1e9, 1e9])), [1.0, 0.0, 6.0])
    assert certainty(np.array([0.9, 0.5])) == pytest.approx(0.7 - 0.2)
    assert certainty(np.array([0.1, 0.9])) == pytest.approx(0.5 - 0.4)
    assert certainty(np.array([0.0, 0.8, 0.1])) == 0.0 and certainty(np.array([])) == 0.0
    assert select_classes(np.array([0.2, 0.9, 0.9, 0.1]), 2).tolist() == [1, 2]
    assert select_classes(np.array([0.2, 0.9, 0.9, 0.1]), None).tolist() == [0, 1, 2, 3]
    assert select_classes(np.array([0.5, 0.5, 0.1]), 1).tolist() == [0]  # ties: lower class id
    assert select_classes(np.array([0.5, 0.1]), 9).tolist() == [0, 1]


def _kotlin_port(own, peers, feats, labels, counts):
    """Bristle.kt @ a505112b, loop by loop with dicts (the (0 until size) selection fixed)."""
    familiar = sorted(set(int(v) for v in labels))
    foreign = [c for c in range(own.shape[0]) if c not in familiar]

    def f1s(w):
        pred = np.argmax(feats.astype(np.float64) @ w.astype(np.float64).T, axis=1)
        out = {}
        for c in familiar:
            tp = sum(1 for p, t in zip(pred, labels, strict=True) if p == c and t == c)
            fp = sum(1 for p, t in zip(pred, labels, strict=True) if p == c and t != c)
            fn = sum(1 for p, t in zip(pred, labels, strict=True) if p != c and t == c)
            prec = tp / (tp + fp) if tp + fp else -1
            rec = tp / (tp + fn) if tp + fn else -1
            out[c] = 0.0 if prec in (-1, 0) or rec in (-1, 0) else 2 * prec * rec / (prec + rec)
        return out

    def weight(score: float) -> float:
        return max(0.0, 10 / (1 + math.exp(min(-score / 100, 700))) - 4)

    my = f1s(own)
    arr, total = own.astype(np.float64).copy(), np.ones(own.shape[0])
    peer_w = {}
    for p, w in enumerate(peers):
        pf = f1s(w)
        size = len(familiar) if counts[p] is None else min(counts[p], len(familiar))
        ranked = [c for c, _ in sorted(pf.items(), key=lambda kv: -kv[1])]
        sel = familiar if size == len(familiar) else ranked[:size]
        vals = np.array([pf[c] for c in sel])
        cert = max(0.0, vals.mean() - vals.std()) if len(sel) else 0.0
        unbounded = 0.0
        for c in sel:
            diff = abs(my[c] - pf[c]) * 10
            score = diff ** (3 + my[c]) if pf[c] > my[c] else -(diff ** (4 + my[c]))
            unbounded += score
            wc = weight(max(-100.0, score)) * cert
            arr[c] += w[c] * wc
            total[c] += wc
        peer_w[p] = weight(unbounded) * cert if len(sel) else 0.0
    arr /= total[:, None]
    for c in foreign:
        for p, w in enumerate(peers):
            arr[c] += w[c] * peer_w[p]
        arr[c] /= sum(peer_w.values()) + 1
    return arr


@st.composite
def cases(draw: st.DrawFn):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c, f = draw(st.integers(2, 5)), draw(st.integers(1, 4))
    p, m = draw(st.integers(0, 5)), draw(st.integers(1, 12))
    familiar = rng.choice(c, size=draw(st.integers(1, c)), replace=False)
    labels = rng.choice(familiar, size=m)
    counts = [draw(st.one_of(st.none(), st.integers(0, c))) for _ in range(p)]
    return (
        rng.normal(size=(c, f)).astype(np.float32),
        rng.normal(size=(p, c, f)).astype(np.float32),
        rng.normal(size=(m, f)).astype(np.float32),
        labels,
        counts,
    )


@settings(max_examples=120, deadline=None)
@given(cases())
def test_matches_loop_port_of_the_kotlin_code(case) -> None:
    own, peers, feats, labels, counts = case
    res = integrate(own, peers, feats, labels, counts)
    reference = _kotlin_port(own, peers, feats, labels, counts)
    np.testing.assert_allclose(res.layer, reference, rtol=2e-5, atol=2e-5)
    assert np.all((res.class_weights >= 0) & (res.class_weights <= 6))
    assert np.all((res.foreign_weights >= 0) & (res.foreign_weights <= 6))
    order = np.arange(len(peers))[::-1]  # peer order does not matter
    np.testing.assert_allclose(
        integrate(own, peers[order], feats, labels, [counts[i] for i in order]).layer,
        res.layer,
        rtol=1e-5,
        atol=1e-6,
    )


@settings(max_examples=40, deadline=None)
@given(cases())
def test_identical_peers_leave_own_unchanged(case) -> None:
    own, peers, feats, labels, _ = case
    copies = np.repeat(own[None], max(len(peers), 1), axis=0)
    np.testing.assert_allclose(integrate(own, copies, feats, labels).layer, own, rtol=1e-5, atol=1e-6)


def test_pinned_value() -> None:
    rng = np.random.default_rng(11)
    own = rng.normal(size=(4, 6)).astype(np.float32)
    peers = (own + 0.3 * rng.normal(size=(5, 4, 6))).astype(np.float32)
    feats = rng.normal(size=(30, 6)).astype(np.float32)
    labels = rng.choice([0, 1, 3], size=30)
    res = integrate(own, peers, feats, labels, [3, 2, None, 1, 3])
    assert float(res.layer.sum()) == pytest.approx(PINNED_SUM, rel=1e-6)
    np.testing.assert_allclose(res.foreign_weights, PINNED_FOREIGN, rtol=1e-6)


PINNED_SUM = 1.6717183589935303
PINNED_FOREIGN = [0.0, 0.34114337483771023, 0.2408195220578261, 0.413104279726828, 0.16983063013556887]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        integrate(OWN, np.stack([PEER_A]), X[:0], Y[:0])
    with pytest.raises(ValueError, match="peers"):
        integrate(OWN, PEER_A, X, Y)
    with pytest.raises(ValueError, match="labels"):
        integrate(OWN, np.stack([PEER_A]), X, np.array([0, 0, 1, 7]))
    with pytest.raises(ValueError, match="class_counts"):
        integrate(OWN, np.stack([PEER_A]), X, Y, [1, 2])
