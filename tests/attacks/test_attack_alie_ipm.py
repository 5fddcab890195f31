"""Test trios for ``alie`` (A Little Is Enough) and ``ipm`` (inner-product manipulation)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.attacks import create_update_attack
from stamen.simulations.attacks.alie import alie_z


def test_alie_z_hand_computed() -> None:
    # n = 50, f = 10: s = floor(26) - 10 = 16, z = Phi^-1(34 / 50)
    assert alie_z(50, 10) == pytest.approx(NormalDist().inv_cdf(0.68))
    assert alie_z(50, 10) == pytest.approx(0.467699, abs=1e-6)
    # n = 3, f = 1: s = floor(2.5) - 1 = 1, z = Phi^-1(2/3)
    assert alie_z(3, 1) == pytest.approx(0.430727, abs=1e-6)
    with pytest.raises(ValueError, match="no z for n=4 clients with f=3"):
        alie_z(4, 3)


def test_alie_hand_computed() -> None:
    # honest 0 and 2: mean 1, std (ddof=1) sqrt(2); f = 1 of n = 3 -> 1 + 0.430727 * sqrt(2)
    out = create_update_attack("alie")(np.array([[0.0], [2.0]], np.float32), 1, np.random.default_rng(0))
    np.testing.assert_allclose(out, [[1 + NormalDist().inv_cdf(2 / 3) * np.sqrt(2)]], rtol=1e-6)
    fixed = create_update_attack("alie", z=1.5)(
        np.array([[0.0], [2.0]], np.float32), 2, np.random.default_rng(0)
    )
    np.testing.assert_allclose(fixed, [[1 + 1.5 * np.sqrt(2)]] * 2, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_alie_is_mean_plus_z_std(h: int, f: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(0, 2, (h, d)).astype(np.float32)
    if np.floor((h + f) / 2 + 1) - f < 1:
        return  # no z exists when the attackers are a majority
    out = create_update_attack("alie")(x, f, np.random.default_rng(0)).astype(np.float64)
    x64 = x.astype(np.float64)
    expected = x64.mean(0) + alie_z(h + f, f) * x64.std(0, ddof=1)
    np.testing.assert_allclose(out, np.repeat(expected[None], f, 0), rtol=1e-5, atol=1e-5)


def test_ipm_hand_computed() -> None:
    honest = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)  # mean (2, 3)
    out = create_update_attack("ipm", epsilon=0.5)(honest, 2, np.random.default_rng(0))
    np.testing.assert_allclose(out, [[-1.0, -1.5], [-1.0, -1.5]])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(1, 30), st.floats(0.01, 100), st.integers(0, 2**32 - 1))
def test_ipm_points_against_the_honest_mean(h: int, d: int, eps: float, seed: int) -> None:
    x = np.random.default_rng(seed).normal(0.3, 1, (h, d)).astype(np.float32)
    out = create_update_attack("ipm", epsilon=eps)(x, 3, np.random.default_rng(0)).astype(np.float64)
    mean = x.astype(np.float64).mean(0)
    assert np.all(out @ mean <= 1e-9)
    np.testing.assert_allclose(out[0], -eps * mean, rtol=1e-5, atol=1e-6)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        create_update_attack("ipm", epsilon=0)
    with pytest.raises(ValueError, match="alie: z"):
        create_update_attack("alie", z="big")


def test_alie_ipm_pinned() -> None:
    honest = np.random.default_rng(7).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        create_update_attack("alie")(honest, 2, np.random.default_rng(0))[0],
        [0.072432, 0.21678, -0.169037],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        create_update_attack("ipm")(honest, 1, np.random.default_rng(0))[0],
        [0.010816, 0.010009, 0.031466],
        atol=1e-6,
    )
