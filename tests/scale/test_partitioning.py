"""Lazy partitions: identical to the eager pre-#15 ``partition()``, bounded memory, padded rows."""

from __future__ import annotations

import numpy as np
import pytest
from eager_partition import eager_partition
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.partition import Partitioning, build_partitioning, partition

LABELS_4x25 = np.repeat(np.arange(4), 25)


def test_hand_built_views_sort_and_pad() -> None:
    # client 0 = flat[0:3] = {5, 2, 7}; client 1 = flat[3:4] + flat[4:5] = {0, 1}
    p = Partitioning(
        flat=np.array([5, 2, 7, 0, 1, 3, 4, 6]),
        starts=np.array([[0, 5], [3, 4]]),
        lengths=np.array([[3, 0], [1, 1]]),
    )
    assert p.indices(0).tolist() == [2, 5, 7]
    assert p.indices(1).tolist() == [0, 1]
    rows, sizes = p.rows(np.array([1, 0, 1]))
    assert rows.tolist() == [[0, 1, 0], [2, 5, 7], [0, 1, 0]]
    assert sizes.tolist() == [2, 3, 2]


def test_iid_cut_like_array_split() -> None:
    p = build_partitioning(np.zeros(10, dtype=np.int64), 3, "iid", seed=0)
    assert p.sizes().tolist() == [4, 3, 3]  # np.array_split: the first n % K parts are longer
    assert p.starts.shape == (3, 1)


@st.composite
def _problems(draw: st.DrawFn) -> tuple[np.ndarray, int, int, str]:
    labels = np.array(draw(st.lists(st.integers(0, 6), min_size=2, max_size=250)), dtype=np.int64)
    scheme = draw(st.sampled_from(["iid", "dirichlet", "shards"]))
    top = len(labels) // 2 if scheme == "shards" else len(labels)
    return labels, draw(st.integers(1, min(top, 30))), draw(st.integers(0, 2**32 - 1)), scheme


@settings(max_examples=80, deadline=None)
@given(problem=_problems(), alpha=st.floats(0.05, 50.0))
def test_equals_the_eager_partition(problem: tuple[np.ndarray, int, int, str], alpha: float) -> None:
    labels, k, seed, scheme = problem
    kw = {"alpha": alpha, "shards_per_client": 2, "min_size": 0}
    lazy = build_partitioning(labels, k, scheme, seed=seed, **kw)
    eager = eager_partition(labels, k, scheme, seed=seed, **kw)
    for pid in range(k):
        got = lazy.indices(pid)
        assert got.dtype == np.int64 and np.array_equal(got, eager[pid])
    rows, sizes = lazy.rows(np.arange(k)[::-1])
    for i, pid in enumerate(range(k - 1, -1, -1)):
        assert np.array_equal(rows[i, : sizes[i]], eager[pid]) and not rows[i, sizes[i] :].any()


def test_dirichlet_redraws_like_the_eager_version() -> None:
    # min_size forces redraws: the generator must be consumed in the same order on every attempt
    kw = {"alpha": 0.3, "min_size": 5}
    lazy = partition(LABELS_4x25, 10, "dirichlet", seed=0, **kw)
    eager = eager_partition(LABELS_4x25, 10, "dirichlet", seed=0, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(lazy, eager, strict=True))
    assert min(len(p) for p in lazy) >= 5


def test_pinned_splits() -> None:
    p = build_partitioning(LABELS_4x25, 5, "dirichlet", seed=0, alpha=0.1)
    assert p.sizes().tolist() == [22, 25, 2, 16, 35]
    assert p.indices(0)[:6].tolist() == [50, 51, 53, 54, 55, 56]
    s = build_partitioning(LABELS_4x25, 4, "shards", seed=0, shards_per_client=2)
    assert s.indices(1).tolist()[:18] == [0, 1, 2, 3, 6, 7, 12, 14, 17, 18, 21, 24, 36, 75, 80, 81, 83, 85]
    assert s.indices(1).tolist()[18:] == [86, 87, 90, 93, 94, 97, 98]


def test_memory_is_flat_plus_segments() -> None:
    # 100,000 clients over 200,000 samples: one index array and two (K, 1) tables, no per-client arrays
    labels = np.arange(200_000, dtype=np.int64) % 10
    p = build_partitioning(labels, 100_000, "iid", seed=1)
    assert p.flat.nbytes + p.starts.nbytes + p.lengths.nbytes == 8 * (200_000 + 2 * 100_000)
    assert p.indices(99_999).tolist() == np.sort(p.flat[-2:]).tolist()


@pytest.mark.parametrize("bad", [-1, 3])
def test_out_of_range_ids_are_refused(bad: int) -> None:
    p = build_partitioning(LABELS_4x25, 3, "iid", seed=0)
    with pytest.raises(ValueError, match=r"out of range \[0, 3\)"):
        p.indices(bad)
    with pytest.raises(ValueError, match=r"must be in \[0, 3\)"):
        p.rows(np.array([0, bad]))
