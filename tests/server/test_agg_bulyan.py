"""Test trio for ``bulyan``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create
from stamen.server.aggregators.bulyan import (
    _SortedRows,
    closest_to_median_mean,
    recursive_krum,
    window_means,
    window_starts,
)
from stamen.server.aggregators.krum import krum_scores


def test_bulyan_hand_computed() -> None:
    """f = 1, n = 7 = 4f + 3: theta = 5 Krum picks, then beta = 3 values around the median.

    Krum (r - f - 2 neighbours, clamped to [1, r - 1]) on {0, 1, 2, 3, 4, 100, -100} picks 2 (score
    1+1+4+4), then 1 (tie with 3, lower index), then 3, then 0 (tie with 4), then 4 (tie with 100,
    lower index): the selection is {0..4}; median 2, closest three 1, 2, 3 -> 2.
    """
    x = np.array([[0], [1], [2], [3], [4], [100], [-100]], dtype=np.float32)
    d2 = (x.astype(np.float64) - x.T) ** 2
    np.testing.assert_array_equal(recursive_krum(d2, 1, 5), [2, 1, 3, 0, 4])
    np.testing.assert_array_equal(create("bulyan", assumed_byzantine=1)(x), [2.0])


def test_closest_to_median_hand_computed() -> None:
    # theta = 5, beta = 3: median 5; windows [0,1,5] (cost 5), [1,5,6] (4), [5,6,7] (2) -> mean 6
    # theta = 6, beta = 4: median 3.5; windows [1..4] (2.5), [2,3,4,9] (5.5), [3,4,9,10] (6.5) -> 2.5
    col5 = np.array([[7], [0], [5], [1], [6]], dtype=np.float32)
    np.testing.assert_allclose(closest_to_median_mean(col5, np.arange(5), 3), [6.0])
    col6 = np.array([[10], [1], [4], [9], [2], [3]], dtype=np.float32)
    np.testing.assert_allclose(closest_to_median_mean(col6, np.arange(6), 4), [2.5])


def slow_closest(values: np.ndarray, beta: int) -> list[float]:
    """Means of every minimal-cost beta-window around the median (ties give several)."""
    v = np.sort(values.astype(np.float64))
    med = float(np.median(v))
    costs = [max(med - v[s], v[s + beta - 1] - med) for s in range(len(v) - beta + 1)]
    best = min(costs)
    return [float(v[s : s + beta].mean()) for s, c in enumerate(costs) if c <= best + 1e-9 * (1 + abs(best))]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2), st.integers(3, 9), st.integers(1, 40), st.integers(0, 2**32 - 1), st.booleans())
def test_coordinate_phase_matches_slow_reference(f: int, theta0: int, d: int, seed: int, ties: bool) -> None:
    theta = theta0 + 2 * f
    rng = np.random.default_rng(seed)
    raw = rng.integers(-3, 4, (theta, d)) if ties else rng.standard_normal((theta, d))
    x = raw.astype(np.float32)
    out = closest_to_median_mean(x, np.arange(theta), theta - 2 * f)
    for j in range(d):
        assert min(abs(out[j] - m) for m in slow_closest(x[:, j], theta - 2 * f)) <= 1e-5 * (1 + abs(out[j]))


def test_window_sum_never_sees_an_outlier_outside_it() -> None:
    """theta = 5, beta = 3: median 2, window {1, 2, 3}. A prefix-sum difference would return
    (3e38 + ... - 3e38) garbage; the outward sums give exactly 2 (and 2.25 on the masked path)."""
    col = np.array([[-3e38], [1.0], [2.0], [3.0], [3e38]], dtype=np.float32)
    np.testing.assert_array_equal(closest_to_median_mean(col, np.arange(5), 3), [2.0])
    # theta = 7, beta = 2 < theta - beta: masked path; median 2, windows {1, 2} (cost 1),
    # {2, 2.5} (0.5), {2.5, 4} (2) -> 2.25
    col7 = np.array([[-3e38], [-3e38], [1.0], [2.0], [2.5], [4.0], [3e38]], dtype=np.float32)
    np.testing.assert_array_equal(closest_to_median_mean(col7, np.arange(7), 2), [2.25])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 50), st.integers(0, 2**32 - 1), st.booleans())
def test_window_starts_and_means_match_argmin_reference(
    beta: int, extra: int, width: int, seed: int, ties: bool
) -> None:
    """Lowest-index argmin of the window costs, and the plain mean of that window, column by column."""
    theta = beta + extra
    rng = np.random.default_rng(seed)
    raw = rng.integers(-3, 4, (theta, width)) if ties else rng.standard_normal((theta, width))
    v = np.sort(raw.astype(np.float32), axis=0)
    start = window_starts(v, beta)
    means = window_means(v, start, beta)
    for j in range(width):
        col = v[:, j].astype(np.float64)
        med = 0.5 * (col[(theta - 1) // 2] + col[theta // 2])
        costs = [max(med - col[s], col[s + beta - 1] - med) for s in range(theta - beta + 1)]
        assert start[j] == int(np.argmin(costs))
        assert means[j] == pytest.approx(col[start[j] : start[j] + beta].mean(), rel=1e-6, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2), st.integers(0, 4), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_selection_matches_slow_recursive_krum(f: int, extra: int, d: int, seed: int) -> None:
    n = 4 * f + 3 + extra
    x = np.random.default_rng(seed).standard_normal((n, d))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):  # the definition, one Krum call per pick on the shrinking set
        sub = d2[np.ix_(remaining, remaining)]
        chosen.append(remaining.pop(int(np.argmin(krum_scores(sub, f)))))
    np.testing.assert_array_equal(recursive_krum(d2, f, n - 2 * f), chosen)


def test_size_condition_names_assumed_byzantine() -> None:
    agg = create("bulyan", assumed_byzantine=2)
    agg(np.random.default_rng(0).standard_normal((11, 3)).astype(np.float32))  # 4f + 3 = 11
    with pytest.raises(ValueError, match=r"4\*assumed_byzantine \+ 3 <= n; got assumed_byzantine=2, n=10"):
        agg(np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match="assumed_byzantine"):
        create("bulyan", assumed_byzantine=1.5)


def test_bulyan_resists_a_far_coalition() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1, (9, 20)).astype(np.float32)
    attacked = np.concatenate([honest, np.full((2, 20), 1e6, np.float32)])
    out = create("bulyan", assumed_byzantine=2)(attacked)
    assert np.all(out <= honest.max(axis=0)) and np.all(out >= honest.min(axis=0))


def test_bulyan_pinned_value() -> None:
    updates = np.random.default_rng(7).standard_normal((11, 4)).astype(np.float32)
    np.testing.assert_allclose(
        create("bulyan", assumed_byzantine=2)(updates), [0.019381, -0.193588, -1.552138, -0.635679], atol=1e-6
    )


def slow_recursive_krum(d2: np.ndarray, f: int, theta: int) -> list[int]:
    """The definition: one Krum call per pick on the shrinking distance sub-matrix."""
    remaining, chosen = list(range(d2.shape[0])), []
    for _ in range(theta):
        sub = d2[np.ix_(remaining, remaining)]
        chosen.append(remaining.pop(int(np.argmin(krum_scores(sub, f)))))
    return chosen


@settings(max_examples=6, deadline=None)
@given(st.integers(129, 170), st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_incremental_path_for_large_cohorts_matches_definition(n: int, f: int, seed: int) -> None:
    f = min(f, (n - 3) // 4)
    x = np.random.default_rng(seed).standard_normal((n, 8))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(recursive_krum(d2, f, n - 2 * f), slow_recursive_krum(d2, f, n - 2 * f))


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 30), st.integers(0, 2**32 - 1), st.data())
def test_sorted_rows_keep_exact_neighbour_sums(n: int, seed: int, data: st.DataObject) -> None:
    """After any removals and any neighbour counts, each live row sums its k nearest live others."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    rows = _SortedRows(d2, data.draw(st.integers(1, n - 1)))
    alive = list(range(n))
    for j in rng.permutation(n)[: n - 2]:
        alive.remove(int(j))
        k = data.draw(st.integers(1, len(alive) - 1))
        rows.remove(int(j), k)
        for i in alive:
            ref = sorted(d2[i, a] for a in alive if a != i)[:k]
            assert rows.score[i] == pytest.approx(sum(ref), rel=1e-9, abs=1e-12)
