"""Test trio for ``krum`` and ``multikrum``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create
from stamen.server.aggregators.krum import krum_select

POINTS = np.array([[0], [1], [2], [10], [11]], dtype=np.float32)


def test_krum_hand_computed() -> None:
    # f = 1, n = 5: each score sums the n - f - 2 = 2 smallest squared distances to the others:
    # 0 -> 1 + 4 = 5, 1 -> 1 + 1 = 2, 2 -> 1 + 4 = 5, 10 -> 1 + 64 = 65, 11 -> 1 + 81 = 82
    np.testing.assert_array_equal(create("krum", assumed_byzantine=1)(POINTS), [1.0])
    np.testing.assert_array_equal(krum_select(POINTS, 1, 5), [1, 0, 2, 3, 4])  # tie 0/2 -> lower index


def test_multikrum_hand_computed() -> None:
    # default m = n - f = 4 -> rows 1, 0, 2, 10 -> (0 + 1 + 2 + 10) / 4; m = 3 -> rows 0, 1, 2
    np.testing.assert_allclose(create("multikrum", assumed_byzantine=1)(POINTS), [3.25])
    np.testing.assert_allclose(create("multikrum", assumed_byzantine=1, num_selected=3)(POINTS), [1.0])


def reference_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Slow reference: Blanchard et al.'s score with direct float64 distances."""
    n = len(x)
    x64 = x.astype(np.float64)
    scores = []
    for i in range(n):
        dist = sorted(float(np.sum((x64[i] - x64[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dist[: n - f - 2]))
    return np.array(scores)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3), st.integers(1, 6), st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_selection_matches_slow_reference(f: int, extra: int, d: int, seed: int) -> None:
    """The m chosen updates have the m lowest reference scores (up to float32 ties)."""
    n = 2 * f + 2 + extra
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1)) + rng.normal(0, 5)).astype(np.float32)
    ref = reference_scores(x, f)
    m = int(rng.integers(1, n + 1))
    chosen = krum_select(x, f, m)
    rest = np.setdiff1d(np.arange(n), chosen)
    tol = 1e-5 * ref.max()
    assert len(set(chosen.tolist())) == m
    if len(rest):
        assert ref[chosen].max() <= ref[rest].min() + tol
    out = create("multikrum", assumed_byzantine=f, num_selected=m)(x)
    np.testing.assert_allclose(out, x[chosen].astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-5)
    assert (
        ref[np.flatnonzero((x == create("krum", assumed_byzantine=f)(x)).all(axis=1))].min()
        <= ref.min() + tol
    )


@pytest.mark.parametrize("rule", ["krum", "multikrum"])
def test_size_condition_names_assumed_byzantine(rule: str) -> None:
    agg = create(rule, assumed_byzantine=2)
    agg(np.zeros((7, 3), np.float32))  # 2f + 2 = 6 < 7
    with pytest.raises(ValueError, match=r"2\*assumed_byzantine \+ 2 < n; got assumed_byzantine=2, n=6"):
        agg(np.zeros((6, 3), np.float32))


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="assumed_byzantine"):
        create("krum", assumed_byzantine=-1)
    with pytest.raises(ValueError, match="num_selected"):
        create("multikrum", num_selected=0)
    with pytest.raises(ValueError, match="num_selected=9 exceeds the n=5"):
        create("multikrum", num_selected=9)(np.zeros((5, 2), np.float32))


def test_krum_resists_a_far_coalition() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1, (8, 50)).astype(np.float32)
    attacked = np.concatenate([honest, np.full((2, 50), 100.0, np.float32)])
    out = create("krum", assumed_byzantine=2)(attacked)
    assert any(np.array_equal(out, h) for h in honest)


def test_krum_pinned_value() -> None:
    updates = np.random.default_rng(7).standard_normal((9, 4)).astype(np.float32)
    np.testing.assert_allclose(
        create("krum", assumed_byzantine=2)(updates), [-0.492206, -0.620475, 0.489842, 0.356887], atol=1e-6
    )
    np.testing.assert_allclose(
        create("multikrum", assumed_byzantine=2)(updates),
        [-0.582098, -0.40332, -0.63603, 0.000827],
        atol=1e-6,
    )
