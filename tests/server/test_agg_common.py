"""Shared numerics of the robust rules: centred Gram distances and parameter checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators._common import (
    centered_gram,
    check_count,
    check_positive,
    pairwise_sq_distances,
    sorted_column_blocks,
)


def test_distances_hand_computed() -> None:
    x = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    # |(3,4)|^2 = 25, |(1,0)|^2 = 1, |(2,4)|^2 = 20
    np.testing.assert_allclose(pairwise_sq_distances(x), [[0, 25, 1], [25, 0, 20], [1, 20, 0]], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 70000), st.integers(0, 2**32 - 1), st.floats(-100, 100))
def test_distances_match_float64_reference_even_with_offset(n: int, d: int, seed: int, offset: float) -> None:
    """Rows sharing a large common component: the centred Gram keeps ~1e-6 relative accuracy."""
    rng = np.random.default_rng(seed)
    x = (offset + 0.01 * rng.standard_normal((n, d))).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(pairwise_sq_distances(x), ref, rtol=1e-5, atol=1e-6 * ref.max() + 1e-12)


def test_gram_with_extra_rows_matches_stacked_gram() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 40000)).astype(np.float32)
    extra = rng.standard_normal((1, 40000)).astype(np.float32)
    both = np.concatenate([x, extra]).astype(np.float64)
    centred = both - x.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(centered_gram(x, extra), centred @ centred.T, rtol=1e-5, atol=1e-3)


def test_sorted_blocks_cover_every_column_once() -> None:
    x = np.random.default_rng(0).standard_normal((3, 9000)).astype(np.float32)
    seen = np.zeros(9000, dtype=int)
    for cols, block in sorted_column_blocks(x, np.array([2, 0])):
        seen[cols] += 1
        np.testing.assert_array_equal(block, np.sort(x[[2, 0], cols].T, axis=1))
    assert np.all(seen == 1)


def test_sorted_blocks_of_some_rows_keep_their_own_nans() -> None:
    """Excluded rows become NaN sentinels; the yielded prefix is exactly the selected rows sorted,
    a NaN of a selected row included (numpy sorts NaN last either way)."""
    x = np.array([[3.0, 1.0], [np.nan, 2.0], [-1.0, 9.0], [5.0, -4.0]], dtype=np.float32)
    blocks = list(sorted_column_blocks(x, np.array([1, 3])))
    assert len(blocks) == 1
    np.testing.assert_array_equal(blocks[0][1], [[5.0, np.nan], [-4.0, 2.0]])
    np.testing.assert_array_equal(x[1], [np.nan, 2.0])  # input untouched


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_check_count_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="assumed_byzantine"):
        check_count("assumed_byzantine", bad)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", False])
def test_check_positive_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="tau"):
        check_positive("tau", bad)
