"""Shared sample pool: each client's Dirichlet draw, index views, memory independent of the clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.pool import POOL_STREAM, build_pool_partitioning
from stamen.simulations.provider import DataSpec, client_data, dataset, partition_sizes, partitions

LABELS = np.repeat(np.arange(4), 25)  # 100 samples, 4 balanced classes


def test_class_index_by_hand() -> None:
    parts = build_pool_partitioning(np.array([2, 0, 1, 0, 2]), 3, 4, alpha=1.0, seed=0)
    assert parts.by_class.tolist() == [1, 3, 2, 0, 4]  # class 0: samples 1, 3; class 1: 2; class 2: 0, 4
    assert parts.class_starts.tolist() == [0, 2, 3, 5]
    assert parts.sizes().tolist() == [4, 4, 4]


def test_one_sample_per_class_gives_the_multinomial_counts() -> None:
    """Pool [2, 0, 1]: a draw from class c can only be the one sample of class c, so client k's
    indices are its multinomial counts spelt out (hand-checked against the generator's own draws)."""
    parts = build_pool_partitioning(np.array([2, 0, 1]), 5, 6, alpha=0.5, seed=7)
    for pid in range(5):
        rng = np.random.default_rng([7, pid, POOL_STREAM])
        counts = rng.multinomial(6, rng.dirichlet([0.5, 0.5, 0.5]))  # classes 0, 1, 2
        expected = sorted([1] * counts[0] + [2] * counts[1] + [0] * counts[2])  # sample of each class
        assert parts.indices(pid).tolist() == expected


def test_pinned_indices() -> None:
    parts = build_pool_partitioning(LABELS, 1000, 6, alpha=0.5, seed=3)
    assert parts.indices(0).tolist() == PINNED_0
    assert parts.indices(999).tolist() == PINNED_999


PINNED_0 = [43, 79, 85, 86, 95, 95]  # sample 95 twice: draws are with replacement
PINNED_999 = [78, 86, 93, 94, 94, 99]


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=200),
    clients=st.integers(1, 10**6),
    n=st.integers(1, 50),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_rows_are_the_clients_draws(
    labels: list[int], clients: int, n: int, alpha: float, seed: int, data: st.DataObject
) -> None:
    y = np.array(labels, dtype=np.int64)
    parts = build_pool_partitioning(y, clients, n, alpha=alpha, seed=seed)
    pids = np.array(data.draw(st.lists(st.integers(0, clients - 1), max_size=8)), dtype=np.int64)
    rows, sizes = parts.rows(pids)
    assert rows.shape == (len(pids), n) and sizes.tolist() == [n] * len(pids)
    for row, pid in zip(rows, pids, strict=True):
        own = parts.indices(int(pid))
        assert np.array_equal(row, own)
        assert np.all(np.diff(own) >= 0) and 0 <= own.min() and own.max() < len(y)
    # a client's draw does not depend on how many clients there are
    if len(pids):
        other = build_pool_partitioning(y, int(pids.max()) + 1, n, alpha=alpha, seed=seed)
        assert np.array_equal(other.indices(int(pids[0])), parts.indices(int(pids[0])))


def test_memory_does_not_grow_with_clients() -> None:
    def nbytes(k: int) -> int:
        parts = build_pool_partitioning(LABELS, k, 40, alpha=0.5, seed=0)
        return sum(a.nbytes for a in (parts.by_class, parts.class_starts))

    assert nbytes(10) == nbytes(10**7) == 100 * 8 + 5 * 8  # O(pool): 100 indices, 5 class offsets


@pytest.mark.parametrize(("alpha", "low", "high"), [(0.05, 0.8, 1.0), (100.0, 0.25, 0.45)])
def test_alpha_sets_the_label_skew(alpha: float, low: float, high: float) -> None:
    """Mean share of a client's largest class: near 1 for alpha = 0.05, near 1/4 (4 classes, 40
    samples: about 0.35 from sampling noise alone) for alpha = 100."""
    parts = build_pool_partitioning(LABELS, 500, 40, alpha=alpha, seed=1)
    rows, _ = parts.rows(np.arange(500))
    shares = np.stack([np.bincount(LABELS[r], minlength=4) for r in rows]).max(axis=1) / 40
    assert low <= shares.mean() <= high


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 0}, "num_clients must be >= 1"),
        ({"samples_per_client": 0}, "samples_per_client must be >= 1"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"seed": -1}, "seed must be in"),
        ({"labels": np.array([0.5, 1.0])}, "labels must be"),
        ({"labels": np.array([], dtype=np.int64)}, "labels must be"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"labels": LABELS, "num_clients": 3, "samples_per_client": 4, "alpha": 1.0, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_pool_partitioning(**args)  # type: ignore[arg-type]


def test_provider_gives_each_client_its_pool_samples() -> None:
    """More clients than samples (digits: 1,437 training samples, 5,000 clients of 12)."""
    spec = DataSpec(dataset="digits", partition="pool", num_clients=5000, samples_per_client=12, alpha=0.3)
    ds, parts = dataset(spec), partitions(spec)
    assert partition_sizes(spec)[4999] == 12
    for pid in (0, 4999):
        got = client_data(spec, pid)
        idx = parts.indices(pid)
        assert np.array_equal(got.x, ds.x_train[idx]) and np.array_equal(got.y, ds.y_train[idx])
