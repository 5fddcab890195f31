"""Partitions: disjoint covers, determinism, label skew, errors."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.partition import SCHEMES, partition, partition_table

LABELS_4x25 = np.repeat(np.arange(4), 25)  # 100 samples, 4 balanced classes


def _assert_disjoint_cover(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates inside a client
    together = np.concatenate(parts)
    assert len(together) == n  # nothing assigned twice ...
    assert np.array_equal(np.sort(together), np.arange(n))  # ... and nothing left out


@st.composite
def _problems(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    labels = np.array(draw(st.lists(st.integers(0, 9), min_size=1, max_size=300)), dtype=np.int64)
    num_clients = draw(st.integers(1, min(len(labels), 20)))
    seed = draw(st.integers(0, 2**32 - 1))
    return labels, num_clients, seed


@settings(max_examples=60, deadline=None)
@given(problem=_problems(), alpha=st.floats(0.05, 100.0))
def test_dirichlet_is_a_disjoint_cover(problem: tuple[np.ndarray, int, int], alpha: float) -> None:
    labels, k, seed = problem
    parts = partition(labels, k, "dirichlet", seed=seed, alpha=alpha, min_size=0)
    _assert_disjoint_cover(parts, len(labels), k)


@settings(max_examples=60, deadline=None)
@given(problem=_problems())
def test_iid_is_a_balanced_disjoint_cover(problem: tuple[np.ndarray, int, int]) -> None:
    labels, k, seed = problem
    parts = partition(labels, k, "iid", seed=seed)
    _assert_disjoint_cover(parts, len(labels), k)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(problem=_problems(), shards=st.integers(1, 4))
def test_shards_is_a_disjoint_cover(problem: tuple[np.ndarray, int, int], shards: int) -> None:
    labels, k, seed = problem
    if k * shards > len(labels):
        shards = 1
    parts = partition(labels, k, "shards", seed=seed, shards_per_client=shards)
    _assert_disjoint_cover(parts, len(labels), k)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deterministic_from_the_seed(scheme: str) -> None:
    labels = np.random.default_rng(7).integers(0, 10, size=500)
    a = partition(labels, 8, scheme, seed=3)
    b = partition(labels, 8, scheme, seed=3)
    c = partition(labels, 8, scheme, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    g = partition(labels, 8, scheme, seed=np.random.default_rng(3))  # a Generator works too
    assert all(np.array_equal(x, y) for x, y in zip(a, g, strict=True))


def test_dirichlet_small_alpha_pinned_table() -> None:
    parts = partition(LABELS_4x25, 5, "dirichlet", seed=0, alpha=0.1)
    expected = [[0, 0, 22, 0], [6, 18, 1, 0], [2, 0, 0, 0], [8, 6, 0, 2], [9, 1, 2, 23]]
    assert partition_table(parts, LABELS_4x25, 4).tolist() == expected


def _mean_top_class_share(alpha: float) -> float:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "dirichlet", seed=1, alpha=alpha)
    table = partition_table(parts, labels, 10)
    return float(np.mean(table.max(axis=1) / table.sum(axis=1)))


def test_dirichlet_alpha_controls_label_skew() -> None:
    assert _mean_top_class_share(0.1) > 0.6  # few classes per client
    assert _mean_top_class_share(100.0) < 0.2  # near IID: 10 classes, top share ~0.1


def test_dirichlet_respects_min_size() -> None:
    parts = partition(LABELS_4x25, 10, "dirichlet", seed=0, alpha=0.3, min_size=5)
    assert min(len(p) for p in parts) >= 5


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="fewer than min_size=10 samples in 1000 draws"):
        partition(LABELS_4x25, 10, "dirichlet", seed=0, alpha=0.01, min_size=10)


def test_shards_pinned_table_and_two_shards_each() -> None:
    parts = partition(LABELS_4x25, 4, "shards", seed=0, shards_per_client=2)
    expected = [[0, 13, 11, 1], [12, 1, 0, 12], [0, 11, 2, 12], [13, 0, 12, 0]]
    assert partition_table(parts, LABELS_4x25, 4).tolist() == expected


def test_partition_table_counts() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    table = partition_table([np.array([0, 1]), np.array([2, 3, 4, 5])], labels, 3)
    assert table.tolist() == [[1, 1, 0], [0, 1, 3]]
    with pytest.raises(ValueError, match="num_classes=2 does not cover"):
        partition_table([np.arange(6)], labels, 2)


@pytest.mark.parametrize(
    ("labels", "k", "scheme", "kwargs", "needle"),
    [
        (LABELS_4x25, 101, "iid", {}, "num_clients must be in [1, 100]"),
        (LABELS_4x25, 0, "iid", {}, "num_clients must be in [1, 100]"),
        (LABELS_4x25, 2, "pathological", {}, "unknown partition scheme 'pathological'"),
        (LABELS_4x25, 2, "dirichlet", {"alpha": 0.0}, "alpha must be a finite number > 0"),
        (LABELS_4x25, 2, "dirichlet", {"min_size": 51}, "min_size must be in [0, 50]"),
        (LABELS_4x25, 60, "shards", {}, "shards_per_client must be in [1, 1]"),
        (LABELS_4x25.reshape(4, 25), 2, "iid", {}, "1-D"),
        (np.array([], dtype=np.int64), 1, "iid", {}, "non-empty"),
        (np.array([0.5, 1.0]), 1, "iid", {}, "must be integers"),
        (np.array([0, -1]), 1, "iid", {}, "must be >= 0"),
    ],
)
def test_bad_input_is_a_clear_value_error(
    labels: np.ndarray, k: int, scheme: str, kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        partition(labels, k, scheme, seed=0, **kwargs)
