"""Test trio for ``median`` (coordinate-wise)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.server.aggregators import create


def test_median_hand_computed() -> None:
    odd = np.array([[1, 10], [2, 20], [3, -100]], dtype=np.float32)  # medians 2 and 10
    np.testing.assert_array_equal(create("median")(odd), [2.0, 10.0])
    even = np.array([[1], [2], [3], [10]], dtype=np.float32)  # (2 + 3) / 2
    np.testing.assert_array_equal(create("median")(even, np.array([1.0, 1, 1, 100])), [2.5])


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 9), st.integers(1, 5000)),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
def test_median_matches_numpy(updates: np.ndarray) -> None:
    out = create("median")(updates)
    assert out.dtype == np.float32 and out.shape == (updates.shape[1],)
    np.testing.assert_allclose(out, np.median(updates.astype(np.float64), axis=0), rtol=1e-6, atol=1e-6)


def test_median_ignores_a_minority_of_huge_values() -> None:
    honest = np.random.default_rng(1).normal(0, 1, (7, 100)).astype(np.float32)
    attacked = np.concatenate([honest, np.full((3, 100), 1e30, np.float32)])
    out = create("median")(attacked)
    assert np.all(out <= honest.max(axis=0)) and np.all(out >= honest.min(axis=0))


def test_median_pinned_value() -> None:
    updates = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        create("median")(updates), [-0.454671, -0.620475, -0.029252, 0.356887], atol=1e-6
    )
