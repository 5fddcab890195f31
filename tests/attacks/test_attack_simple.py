"""Test trio for ``sign_flip``, ``scaling`` and ``gaussian``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.attacks import create_update_attack
from stamen.simulations.attacks.base import OwnUpdateAttack

HONEST = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]], dtype=np.float32)


def test_flip_and_scale_own_updates_hand_computed() -> None:
    own = np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(create_update_attack("sign_flip")(HONEST, 2, rng, own=own), -own)
    np.testing.assert_array_equal(
        create_update_attack("sign_flip", scale=2)(HONEST, 2, rng, own=own), -2 * own
    )
    np.testing.assert_array_equal(
        create_update_attack("scaling", scale=10)(HONEST, 2, rng, own=own), 10 * own
    )
    assert isinstance(create_update_attack("sign_flip"), OwnUpdateAttack)


def test_without_own_rows_an_honest_row_stands_in() -> None:
    pick = np.random.default_rng(5).choice(3, size=2, replace=False)
    out = create_update_attack("sign_flip")(HONEST, 2, np.random.default_rng(5))
    np.testing.assert_array_equal(out, -HONEST[pick])
    many = create_update_attack("scaling", scale=3)(HONEST, 7, np.random.default_rng(5))  # more than h
    assert all(any(np.array_equal(r, 3 * h) for h in HONEST) for r in many)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 6), st.integers(1, 20), st.floats(0.01, 100), st.integers(0, 2**32 - 1)
)
def test_flip_and_scale_are_linear_in_own_updates(h: int, m: int, d: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((h, d)).astype(np.float32)
    own = rng.standard_normal((m, d)).astype(np.float32)
    flip = create_update_attack("sign_flip", scale=scale)(honest, m, rng, own=own)
    boost = create_update_attack("scaling", scale=scale)(honest, m, rng, own=own)
    np.testing.assert_allclose(flip, -scale * own.astype(np.float64), rtol=1e-6)
    np.testing.assert_allclose(boost, -flip, rtol=1e-6)


def test_own_rows_must_match() -> None:
    with pytest.raises(ValueError, match="own updates have shape"):
        create_update_attack("sign_flip")(
            HONEST, 2, np.random.default_rng(0), own=np.zeros((1, 2), np.float32)
        )


@settings(max_examples=30, deadline=None)
@given(st.floats(-5, 5), st.floats(0.01, 10), st.integers(0, 2**32 - 1))
def test_gaussian_matches_its_distribution_and_generator(mean: float, std: float, seed: int) -> None:
    out = create_update_attack("gaussian", mean=mean, std=std)(HONEST, 4, np.random.default_rng(seed))
    expected = np.random.default_rng(seed).normal(mean, std, size=(4, 2)).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    big = create_update_attack("gaussian", mean=mean, std=std)(
        np.zeros((1, 20000)), 2, np.random.default_rng(seed)
    )
    assert abs(big.mean() - mean) < 5 * std / 200 and abs(big.std() / std - 1) < 0.02


@pytest.mark.parametrize(
    ("kind", "params", "name"),
    [
        ("sign_flip", {"scale": 0}, "scale"),
        ("scaling", {"scale": -1}, "scale"),
        ("gaussian", {"std": 0}, "std"),
        ("gaussian", {"mean": "x"}, "mean"),
    ],
)
def test_bad_parameters(kind: str, params: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        create_update_attack(kind, **params)


def test_simple_pinned_values() -> None:
    honest = np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32)
    flip = create_update_attack("sign_flip")(honest, 2, np.random.default_rng(1))
    noise = create_update_attack("gaussian", std=0.5)(honest, 1, np.random.default_rng(1))
    np.testing.assert_allclose(
        flip, [[0.890592, 0.454671, 0.991646], [-0.060144, -1.340215, 0.492206]], atol=1e-6
    )
    np.testing.assert_allclose(noise, [[0.172792, 0.410809, 0.165219]], atol=1e-6)
