"""Shared sample pool: each client's Dirichlet draw, index views, memory independent of the clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.pool import (
    STREAMS,
    build_pool_partitioning,
    categorical_rows,
    dirichlet_rows,
    splitmix64,
    uniforms,
)
from stamen.simulations.provider import DataSpec, client_data, dataset, partition_sizes, partitions

LABELS = np.repeat(np.arange(4), 25)  # 100 samples, 4 balanced classes


def test_class_index_by_hand() -> None:
    parts = build_pool_partitioning(np.array([2, 0, 1, 0, 2]), 3, 4, alpha=1.0, seed=0)
    assert parts.by_class.tolist() == [1, 3, 2, 0, 4]  # class 0: samples 1, 3; class 1: 2; class 2: 0, 4
    assert parts.class_starts.tolist() == [0, 2, 3, 5]
    assert parts.sizes().tolist() == [4, 4, 4]


def test_splitmix64_matches_the_reference_outputs() -> None:
    """SplitMix64 seeded with 0 (Vigna's splitmix64.c): its first two outputs."""
    assert int(splitmix64(np.uint64(0))) == 0xE220A8397B1DCDAF
    assert int(splitmix64(np.uint64(0x9E3779B97F4A7C15))) == 0x6E789E6AA1B965F4


def test_one_sample_per_class_by_hand() -> None:
    """Pool [2, 0, 1]: a draw of class c can only be the one sample of class c (index 1 for class
    0, 2 for class 1, 0 for class 2), so a client's indices spell out its classes."""
    parts = build_pool_partitioning(np.array([2, 0, 1]), 5, 6, alpha=0.5, seed=7)
    for pid in range(5):
        p = dirichlet_rows(0.5, uniforms(7, STREAMS["gamma"], np.array([pid]), 3))
        cls = categorical_rows(p, uniforms(7, STREAMS["class"], np.array([pid]), 6))[0]
        assert parts.indices(pid).tolist() == sorted([1, 2, 0][c] for c in cls)


def test_categorical_by_hand() -> None:
    p = np.array([[0.2, 0.5, 0.3]])
    u = np.array([[0.1, 0.2, 0.5, 0.69, 0.7, 0.99]])
    assert categorical_rows(p, u).tolist() == [[0, 1, 1, 1, 2, 2]]  # bounds 0.2 and 0.7


def test_uniforms_are_counter_based() -> None:
    u = uniforms(3, 1, np.array([5, 9, 5]), 4)
    assert u.shape == (3, 4) and np.all((u > 0) & (u < 1))
    assert np.array_equal(u[0], u[2]) and not np.array_equal(u[0], u[1])  # a function of the client
    assert np.array_equal(uniforms(3, 1, np.array([5]), 2)[0], u[0, :2])  # and of the counter
    assert not np.array_equal(uniforms(3, 2, np.array([5]), 4), u[:1])  # streams differ
    big = uniforms(0, 1, np.arange(20_000), 5)
    assert abs(big.mean() - 0.5) < 0.005 and abs(big.var() - 1 / 12) < 0.002


@pytest.mark.parametrize("alpha", [0.1, 0.5, 5.0])
def test_dirichlet_matches_numpys(alpha: float) -> None:
    """Reference: numpy's own Dirichlet sampler. Mean 1/C and variance (1/C)(1 - 1/C)/(C alpha + 1)
    of every coordinate, and the marginal's deciles, over 20,000 rows of C = 4."""
    ours = dirichlet_rows(alpha, uniforms(0, 1, np.arange(20_000), 4))
    ref = np.random.default_rng(0).dirichlet(np.full(4, alpha), 20_000)
    assert np.allclose(ours.sum(axis=1), 1.0)
    assert np.allclose(ours.mean(axis=0), 0.25, atol=0.01)
    assert np.allclose(ours.var(axis=0), 0.25 * 0.75 / (4 * alpha + 1), rtol=0.05)
    deciles = np.linspace(0.1, 0.9, 9)
    assert np.allclose(np.quantile(ours[:, 0], deciles), np.quantile(ref[:, 0], deciles), atol=0.015)


def test_dirichlet_survives_underflow() -> None:
    """alpha = 0.01: most Gamma variates underflow to 0; the log-space tail keeps rows finite."""
    p = dirichlet_rows(0.01, uniforms(0, 1, np.arange(2000), 10))
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1.0)
    assert p.max(axis=1).mean() > 0.9  # nearly one class per client


def test_pinned_indices() -> None:
    parts = build_pool_partitioning(LABELS, 1000, 6, alpha=0.5, seed=3)
    assert parts.indices(0).tolist() == PINNED_0
    assert parts.indices(999).tolist() == PINNED_999


PINNED_0 = [8, 10, 12, 55, 62, 79]
PINNED_999 = [31, 34, 41, 50, 52, 70]


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
        assert np.all(np.diff(own) >= 0) and own.min() >= 0 and own.max() < len(y)
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
        ({"seed": 2**64}, "seed must be in"),
        ({"labels": np.array([0.5, 1.0])}, "labels must be"),
        ({"labels": np.array([], dtype=np.int64)}, "labels must be"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "labels": LABELS,
        "num_clients": 3,
        "samples_per_client": 4,
        "alpha": 1.0,
        "seed": 0,
    }
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


def test_repeats_within_a_client_are_rare() -> None:
    """The module docstring's figure: about 2.4 % of clients hold some sample twice at alpha 0.5,
    40 draws, 10 classes of 8,000 (the bound n**2 / (2 * 8000) = 10 % for one class)."""
    parts = build_pool_partitioning(np.repeat(np.arange(10), 8000), 100_000, 40, alpha=0.5, seed=0)
    rows, _ = parts.rows(np.arange(10_000))
    assert 0.015 < (np.diff(rows, axis=1) == 0).any(axis=1).mean() < 0.035
