"""Test trio for ``centered_clipping`` (stateful: centre = previous aggregate)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create

POINTS = np.array([[0.5], [3.0], [-4.0]], dtype=np.float32)


def test_two_rounds_hand_computed() -> None:
    agg = create("centered_clipping", tau=1.0, iters=1)
    # round 1, centre 0: clipped differences 0.5, 1, -1 -> v = 0.5 / 3
    np.testing.assert_allclose(agg(POINTS), [1 / 6], rtol=1e-6)
    # round 2, centre 1/6: differences 1/3, 17/6, -25/6 -> clipped 1/3, 1, -1 -> v = 1/6 + 1/9
    np.testing.assert_allclose(agg(POINTS), [5 / 18], rtol=1e-6)


def test_large_tau_is_the_mean_and_iterations_move_towards_the_cloud() -> None:
    np.testing.assert_allclose(create("centered_clipping", tau=1e9)(POINTS), [-1 / 6], rtol=1e-6)
    one = create("centered_clipping", tau=0.5, iters=1)(POINTS)
    three = create("centered_clipping", tau=0.5, iters=3)(POINTS)
    assert abs(float(one[0])) <= 0.5 / 3 + 1e-7 and abs(float(three[0])) > abs(float(one[0]))


def slow_cc(rounds: list[np.ndarray], tau: float, iters: int) -> list[np.ndarray]:
    """Slow reference: the authors' Clipping aggregator loop, in float64."""
    v, outs = np.zeros(rounds[0].shape[1]), []
    for x in rounds:
        for _ in range(iters):
            diff = x.astype(np.float64) - v
            norms = np.linalg.norm(diff, axis=1)
            scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
            v = v + (diff * scale[:, None]).mean(axis=0)
        outs.append(v)
    return outs


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 8), st.integers(1, 40), st.integers(1, 3), st.floats(0.05, 20), st.integers(0, 2**32 - 1)
)
def test_matches_slow_reference_over_rounds(n: int, d: int, iters: int, tau: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rounds = [(rng.standard_normal((n, d)) * rng.uniform(0.1, 5)).astype(np.float32) for _ in range(3)]
    agg = create("centered_clipping", tau=tau, iters=iters)
    for x, ref in zip(rounds, slow_cc(rounds, tau, iters), strict=True):
        out = agg(x)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref).max()))


def test_each_iteration_moves_at_most_tau() -> None:
    x = np.random.default_rng(1).normal(0, 100, (9, 30)).astype(np.float32)
    out = create("centered_clipping", tau=2.0, iters=1)(x)
    assert np.linalg.norm(out) <= 2.0 + 1e-5


def test_errors() -> None:
    with pytest.raises(ValueError, match="tau"):
        create("centered_clipping", tau=0.0)
    with pytest.raises(ValueError, match="iters"):
        create("centered_clipping", iters=0)
    agg = create("centered_clipping")
    agg(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="update size 4 differs"):
        agg(np.zeros((2, 4), np.float32))


def test_centered_clipping_pinned_value() -> None:
    rng = np.random.default_rng(7)
    agg = create("centered_clipping", tau=1.0, iters=2)
    agg(rng.standard_normal((6, 4)).astype(np.float32))
    np.testing.assert_allclose(
        agg(rng.standard_normal((6, 4)).astype(np.float32)),
        [-0.024549, -0.124101, -0.711456, -0.202076],
        atol=1e-6,
    )
