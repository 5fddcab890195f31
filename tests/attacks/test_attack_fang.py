"""Test trio for ``fang_krum`` and ``fang_trmean`` (Fang et al. 2020)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create
from stamen.simulations.attacks import create_update_attack
from stamen.simulations.attacks.fang import lambda_upper_bound

LINE = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)


def test_fang_krum_hand_computed() -> None:
    # h = 3, d = 1: nearest m - c - 2 = 1 honest neighbour -> min sum 1; / max(h - c - 1, 1) = 1;
    # plus max |x_i| = 3 -> lambda_0 = 4
    assert lambda_upper_bound(LINE.astype(np.float64), 2) == pytest.approx(4.0)
    # c = 2 identical copies of -4 * sign(2) = -4: each is the other's nearest (distance 0) -> Krum picks one
    np.testing.assert_allclose(
        create_update_attack("fang_krum")(LINE, 2, np.random.default_rng(0)), [[-4.0]] * 2
    )
    # c = 1: a lone crafted -lambda never beats the honest scores (1) -> fallback mean - lambda ~ 2
    out = create_update_attack("fang_krum")(LINE, 1, np.random.default_rng(0))
    np.testing.assert_allclose(out, [[2.0]], atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 12), st.integers(1, 4), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_fang_krum_gets_selected_by_the_krum_it_targets(h: int, c: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(0.5, 1, (h, d)).astype(np.float32)
    f = min(c, (h + c - 3) // 2)  # keep 2f + 2 < n for the defended Krum
    mal = create_update_attack("fang_krum", assumed_byzantine=f)(x, c, np.random.default_rng(0))
    chosen = create("krum", assumed_byzantine=f)(np.concatenate([mal, x]))
    mean = x.astype(np.float64).mean(0)
    sign = np.sign(mean)
    if np.allclose(mal[0], mean, atol=1e-4):  # gave up: lambda fell below the threshold
        return
    lam = -mal[0].astype(np.float64) / np.where(sign == 0, 1, sign)  # otherwise it is -lambda * s ...
    assert np.all(lam[sign != 0] > 0) and np.ptp(lam[sign != 0]) <= 1e-5 * lam.max()
    np.testing.assert_array_equal(chosen, mal[0])  # ... and the targeted Krum picks it


def test_fang_trmean_hand_computed() -> None:
    # column 0: 1, 3 -> mean > 0 -> push down: [w_min / 2, w_min] = [0.5, 1]
    # column 1: -1, -3 -> mean < 0 -> push up: w_max = -1 <= 0 -> [w_max, w_max / 2] = [-1, -0.5]
    honest = np.array([[1.0, -1.0], [3.0, -3.0]], np.float32)
    u = np.random.default_rng(4).random((3, 2))
    out = create_update_attack("fang_trmean")(honest, 3, np.random.default_rng(4))
    np.testing.assert_allclose(out[:, 0], 0.5 + 0.5 * u[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], -1.0 + 0.5 * u[:, 1], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(1, 40), st.floats(1.1, 5), st.integers(0, 2**32 - 1))
def test_fang_trmean_pushes_beyond_the_honest_range(h: int, d: int, b: float, seed: int) -> None:
    x = np.random.default_rng(seed).normal(0, 1, (h, d)).astype(np.float32)
    out = create_update_attack("fang_trmean", b=b)(x, 4, np.random.default_rng(seed)).astype(np.float64)
    s = np.sign(x.astype(np.float64).mean(0))
    w_max, w_min = x.max(0).astype(np.float64), x.min(0).astype(np.float64)
    up, down = s < 0, s > 0
    tol = 1e-6 * (1 + np.abs(x).max())
    assert np.all(out[:, up] >= w_max[up] - tol) and np.all(out[:, down] <= w_min[down] + tol)
    hi = np.where(w_max > 0, b * w_max, w_max / b)
    lo = np.where(w_min > 0, w_min / b, b * w_min)
    assert np.all(out[:, up] <= hi[up] + tol) and np.all(out[:, down] >= lo[down] - tol)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="b must be > 1"):
        create_update_attack("fang_trmean", b=1.0)
    with pytest.raises(ValueError, match="assumed_byzantine"):
        create_update_attack("fang_krum", assumed_byzantine=-1)


def test_fang_pinned() -> None:
    honest = np.random.default_rng(7).standard_normal((6, 3)).astype(np.float32)
    krum_row = create_update_attack("fang_krum")(honest, 2, np.random.default_rng(0))[0]
    tr_row = create_update_attack("fang_trmean")(honest, 2, np.random.default_rng(0))[0]
    np.testing.assert_allclose(krum_row, [0.224761, 0.224761, 0.224761], atol=1e-6)
    np.testing.assert_allclose(tr_row, [1.138185, 1.701788, 0.37151], atol=1e-6)
