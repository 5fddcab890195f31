"""Test trio for the ``bucketing`` pre-aggregator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create_pre
from stamen.server.aggregators.bucketing import bucket_means


def test_bucket_means_hand_computed() -> None:
    # permutation (2, 0, 1), s = 2: buckets {2, 0} -> (1 + 5) / 2 = 3 and {1} -> 3 alone; second column
    x = np.array([[1.0, -2.0], [3.0, 7.0], [5.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(bucket_means(x, np.array([2, 0, 1]), 2), [[3.0, 1.0], [3.0, 7.0]])
    # s = 3 over n = 3: one bucket, the plain mean; x untouched
    np.testing.assert_allclose(bucket_means(x, np.array([1, 2, 0]), 3), [[3.0, 3.0]], rtol=1e-7)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [3.0, 7.0], [5.0, 4.0]])


def test_bucketing_follows_its_seeded_permutation() -> None:
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    perm = np.random.default_rng(3).permutation(5)  # what Bucketing(seed=3) draws first
    means, weights = create_pre("bucketing", bucket_size=2, seed=3)(x, np.ones(5))
    expected = [x[perm[0:2]].mean(0), x[perm[2:4]].mean(0), x[perm[4:]].mean(0)]
    np.testing.assert_allclose(means, expected)
    np.testing.assert_array_equal(weights, [2.0, 2.0, 1.0])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_every_update_lands_in_exactly_one_bucket(n: int, s: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    pre = create_pre("bucketing", bucket_size=s, seed=seed)
    means, weights = pre(x)
    sizes = [min(s, n - b * s) for b in range(-(-n // s))]
    assert weights is None and means.shape == (len(sizes), d)
    # bucket means weighted by bucket sizes add back to the plain sum
    np.testing.assert_allclose(np.asarray(sizes) @ means.astype(np.float64), x.sum(0), rtol=1e-4, atol=1e-4)
    if s == 1:  # a pure shuffle
        np.testing.assert_array_equal(np.sort(means, axis=0), np.sort(x, axis=0))


def test_fresh_permutation_per_round_and_reproducible_per_seed() -> None:
    x = np.arange(8, dtype=np.float32).reshape(8, 1)
    a, b = create_pre("bucketing", seed=1), create_pre("bucketing", seed=1)
    first = [a(x)[0] for _ in range(3)]
    np.testing.assert_array_equal(first[0], b(x)[0])
    assert not all(np.array_equal(first[0], f) for f in first[1:])


def test_bucketing_bad_parameters() -> None:
    with pytest.raises(ValueError, match="bucket_size"):
        create_pre("bucketing", bucket_size=0)
    with pytest.raises(ValueError, match="invalid parameters for pre-aggregator 'bucketing'"):
        create_pre("bucketing", size=2)
    with pytest.raises(ValueError, match="unknown pre-aggregator 'nope'"):
        create_pre("nope")


def test_bucketing_pinned_value() -> None:
    x = np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        create_pre("bucketing", bucket_size=2, seed=0)(x)[0],
        [[0.082779, 0.204874, -0.260729], [-0.309622, 0.394294, 0.041375], [-0.890592, -0.454671, -0.991646]],
        atol=1e-6,
    )
