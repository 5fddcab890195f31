"""Bristle peer mode: per-node integration, updateCW, centering, PSI-CA counts, attackers."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.task.bristle.peer import (
    PeerConfig,
    PeerNode,
    PeerState,
    absorb_training,
    center_rows,
    class_count,
    peer_round,
    run_peer_mode,
)

C, F = 4, 4
CENTERS = np.eye(F, dtype=np.float32) * 3


def _samples(classes: tuple[int, ...], per: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.array(classes), per)
    x = CENTERS[y] + rng.normal(scale=0.5, size=(len(y), F)).astype(np.float32)
    return x.astype(np.float32), y


def _setup(honest: list[bool]) -> tuple[list[PeerNode], dict[int, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    spans = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3)]
    nodes, train = [], {}
    for i, ok in enumerate(honest):
        cls = tuple(sorted(spans[i % len(spans)]))
        tx, ty = _samples(cls, 10, rng)
        nodes.append(PeerNode(cls, tx, ty, honest=ok))
        x, y = _samples(cls, 20, rng)
        train[i] = (x, y if ok else (y + 1) % C)  # attackers flip their labels
    return nodes, train


def _softmax_steps(layer: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int = 20) -> np.ndarray:
    w = layer.astype(np.float64).copy()
    for _ in range(steps):
        z = x @ w.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= 0.1 * (p.T @ x) / len(y)
    return w.astype(np.float32)


def test_center_absorb_and_counts_by_hand() -> None:
    np.testing.assert_allclose(center_rows(np.array([[1.0, 3.0], [2.0, 2.0]])), [[-1, 1], [0, 0]])
    cw, tw = np.zeros((3, 2), np.float32), np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(absorb_training(cw, tw, (0, 2)), [[1, 1], [0, 0], [1, 1]])
    a = PeerNode((0, 1), np.zeros((2, 2)), np.array([0, 1]))
    b = PeerNode((1, 2), np.zeros((2, 2)), np.array([1, 2]))
    bad = PeerNode((3,), np.zeros((1, 2)), np.array([3]), honest=False)
    assert class_count(a, b) == 1 and class_count(a, bad) == 2  # attackers claim the node's classes


def test_honest_nodes_learn_their_foreign_classes() -> None:
    nodes, data = _setup([True] * 6)
    test_x, test_y = _samples(tuple(range(C)), 50, np.random.default_rng(9))

    def train(i: int, rnd: int, layer: np.ndarray) -> np.ndarray:
        return _softmax_steps(layer, *data[i])

    def evaluate(i: int, layer: np.ndarray) -> float:
        return float(np.mean(np.argmax(test_x @ layer.T, 1) == test_y))

    state, hist = run_peer_mode(nodes, np.zeros((C, F), np.float32), 8, train, seed=0, evaluate=evaluate)
    assert hist[-1] > 0.9
    alone = np.mean(
        [
            evaluate(i, absorb_training(np.zeros((C, F)), train(i, 0, np.zeros((C, F))), n.classes))
            for i, n in enumerate(nodes)
        ]
    )
    assert alone < 0.7  # alone, a node has trained only 2 of the 4 class rows
    for i, node in enumerate(nodes):  # each node now predicts classes it never trained on
        foreign = [c for c in range(C) if c not in node.classes]
        pred = np.argmax(test_x @ state.consolidated[i].T, 1)
        assert all(np.mean(pred[test_y == c] == c) > 0.8 for c in foreign)


def test_attackers_do_not_integrate_and_forging_replaces_their_messages() -> None:
    nodes, data = _setup([True, True, True, True, False, False])
    init = np.zeros((C, F), np.float32)
    seen: list[int] = []

    def train(i: int, rnd: int, layer: np.ndarray) -> np.ndarray:
        seen.append(i)
        return _softmax_steps(layer, *data[i])

    def forge(honest: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        assert honest.shape == (4, C * F)
        return np.full((k, C * F), 7.0, np.float32)

    start = PeerState([init] * 6, [init] * 6)
    s1 = peer_round(nodes, start, 0, train, 0, PeerConfig(), forge)
    assert seen == list(range(6))
    assert np.all(s1.shared[4] == 7.0) and np.all(s1.shared[5] == 7.0)
    s2 = peer_round(nodes, s1, 1, train, 0, PeerConfig(), forge)
    for i in (4, 5):  # never integrated: consolidated = previous consolidated with trained rows absorbed
        trained = _softmax_steps(s1.consolidated[i], *data[i])
        expected = absorb_training(s1.consolidated[i], trained, nodes[i].classes)
        np.testing.assert_allclose(s2.consolidated[i], expected, rtol=1e-6)
    for i in range(4):  # honest nodes gave the forged layers (accuracy 0 -> score -100) no weight
        assert not np.any(np.isclose(s2.consolidated[i], 7.0))


def test_pinned_two_rounds() -> None:
    nodes, data = _setup([True] * 4)
    state, _ = run_peer_mode(
        nodes, np.zeros((C, F), np.float32), 2, lambda i, r, w: _softmax_steps(w, *data[i]), seed=1
    )
    assert float(np.abs(np.stack(state.consolidated)).sum()) == pytest.approx(PINNED, rel=1e-5)


PINNED = 18.843595504760742


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds"):
        run_peer_mode([], np.zeros((2, 2)), 1, lambda i, r, w: w, seed=0)
