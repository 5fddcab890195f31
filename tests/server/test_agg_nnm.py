"""Test trio for the ``nnm`` pre-aggregator (nearest-neighbour mixing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create_pre
from stamen.server.aggregators.nnm import mix_rows


def test_nnm_hand_computed() -> None:
    # f = 1, n = 4: each row -> mean of its 3 nearest (itself included)
    # 0 -> {0,1,2}; 1 -> {1,0,2}; 2 -> {2,1,0}; 10 -> {10,2,1} = 13/3
    x = np.array([[0], [1], [2], [10]], dtype=np.float32)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    mixed, weights = create_pre("nnm", assumed_byzantine=1)(x, w)
    np.testing.assert_allclose(mixed, [[1.0], [1.0], [1.0], [13 / 3]], rtol=1e-6)
    assert weights is w
    np.testing.assert_array_equal(x, [[0], [1], [2], [10]])  # input untouched


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3), st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_nnm_matches_slow_reference(f: int, extra: int, d: int, seed: int) -> None:
    n = 2 * f + extra
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = []
    for i in range(n):
        dist = np.linalg.norm(x64 - x64[i], axis=1)
        dist[i] = -1.0
        expected.append(x64[np.argsort(dist, kind="stable")[: n - f]].mean(axis=0))
    mixed, weights = create_pre("nnm", assumed_byzantine=f)(x)
    assert weights is None and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-5)


def test_nnm_condition_names_assumed_byzantine() -> None:
    with pytest.raises(ValueError, match=r"2\*assumed_byzantine < n; got assumed_byzantine=2, n=4"):
        create_pre("nnm", assumed_byzantine=2)(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="assumed_byzantine"):
        create_pre("nnm", assumed_byzantine=-2)


def test_nnm_pinned_value() -> None:
    x = np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32)
    mixed, _ = create_pre("nnm", assumed_byzantine=2)(x)
    np.testing.assert_allclose(
        mixed[[0, 4]], [[-0.186367, 0.709601, -0.136486], [-0.261316, -0.362131, -0.431679]], atol=1e-6
    )


def test_mix_rows_hand_computed_with_shared_neighbourhoods() -> None:
    # rows 0 and 2 share a mixing row: one distinct product, copied to both
    mix = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]], dtype=np.float32)
    x = np.array([[2.0, 0.0], [4.0, 2.0], [8.0, 6.0]], dtype=np.float32)
    np.testing.assert_array_equal(mix_rows(mix, x), [[3.0, 1.0], [6.0, 4.0], [3.0, 1.0]])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_mix_rows_equals_the_full_product(n: int, kinds: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = rng.random((kinds, n)).astype(np.float32)
    mix = pool[rng.integers(0, kinds, n)]  # repeated rows, in any order
    x = rng.standard_normal((n, d)).astype(np.float32)
    out = mix_rows(mix, x)
    assert out.dtype == np.float32 and out.shape == (n, d)
    np.testing.assert_allclose(out, mix.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
