"""Test trio for ``trimmed_mean``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.server.aggregators import create
from stamen.server.aggregators.trimmed_mean import trimmed_count


def test_trimmed_mean_hand_computed() -> None:
    # n = 5, beta = 0.2 -> k = 1 from each end: column 1 keeps 2, 3, 4; column 2 keeps 0, 1, 5
    updates = np.array([[1, 0], [2, -50], [3, 1], [4, 5], [100, 9]], dtype=np.float32)
    np.testing.assert_allclose(create("trimmed_mean", beta=0.2)(updates), [3.0, 2.0])
    # beta = 0 is the plain mean
    np.testing.assert_allclose(create("trimmed_mean", beta=0.0)(updates), [22.0, -7.0])


def test_trimmed_count_floor_convention() -> None:
    assert trimmed_count(0.1, 30) == 3  # 0.1 * 30 = 3.0000000000000004 in floating point
    assert trimmed_count(0.29, 100) == 29  # 28.999999999999996
    assert trimmed_count(0.2, 4) == 0


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32, st.tuples(st.integers(1, 9), st.integers(1, 300)), elements=st.floats(-1e4, 1e4, width=32)
    ),
    st.floats(0.0, 0.49),
)
def test_trimmed_mean_matches_slow_reference(updates: np.ndarray, beta: float) -> None:
    n, d = updates.shape
    k = trimmed_count(beta, n)
    expected = [np.mean(sorted(updates[:, j].astype(np.float64))[k : n - k]) for j in range(d)]
    np.testing.assert_allclose(create("trimmed_mean", beta=beta)(updates), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("beta", [-0.1, 0.5, 1.0, "0.1", True])
def test_trimmed_mean_rejects_beta(beta: object) -> None:
    with pytest.raises(ValueError, match="beta"):
        create("trimmed_mean", beta=beta)


def test_trimmed_mean_rejects_trimming_everything() -> None:
    # floor(beta * n + 1e-9) can reach n / 2 only for beta within 1e-9 / n of 0.5
    with pytest.raises(ValueError, match=r"beta=0\.49999999999 trims"):
        create("trimmed_mean", beta=0.49999999999)(np.zeros((2, 3), np.float32))


def test_trimmed_mean_pinned_value() -> None:
    updates = np.random.default_rng(7).standard_normal((10, 4)).astype(np.float32)
    np.testing.assert_allclose(
        create("trimmed_mean", beta=0.2)(updates), [-0.334198, -0.36594, -0.604072, -0.217922], atol=1e-6
    )
