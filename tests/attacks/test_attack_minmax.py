"""Test trio for ``min_max`` and ``min_sum`` (Shejwalkar & Houmansadr 2021)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.attacks import create_update_attack
from stamen.simulations.attacks.minmax import gamma_search

LINE = np.array([[0.0], [2.0], [4.0]], dtype=np.float32)


def test_gamma_search_hand_computed() -> None:
    assert gamma_search(lambda g: g <= 3.3, 10.0, 1e-5) == pytest.approx(3.3, abs=2e-5)
    assert gamma_search(lambda g: g <= 100.0, 10.0, 1e-5) == pytest.approx(20.0, abs=2e-5)  # capped at 2x
    assert gamma_search(lambda g: False, 10.0, 1e-5) == 0.0


def test_min_max_and_min_sum_hand_computed() -> None:
    # mean 2, unit vector delta = 1, m = 2 - gamma
    # min-max: max_i (x_i - m)^2 = (2 + gamma)^2 <= max pair distance 16 -> gamma = 2 -> m = 0
    # min-sum: (gamma - 2)^2 + gamma^2 + (gamma + 2)^2 = 3 gamma^2 + 8 <= min_i sum_j = 8 -> m = 2
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(create_update_attack("min_max")(LINE, 2, rng), [[0.0], [0.0]], atol=5e-5)
    np.testing.assert_allclose(create_update_attack("min_sum")(LINE, 1, rng), [[2.0]], atol=5e-5)


def test_sign_deviation_hand_computed() -> None:
    # mean (2, -2), delta = sign = (1, -1), m = (2 - g, -2 + g); honest pair distance 2^2 + 4^2 = 20
    # |m - (1, -4)|^2 = 2g^2 + 2g + 5 is the larger one for g >= 0: <= 20 -> g = (sqrt(31) - 1) / 2
    honest = np.array([[1.0, -4.0], [3.0, 0.0]], np.float32)
    g = (np.sqrt(31.0) - 1) / 2
    out = create_update_attack("min_max", dev_type="sign")(honest, 1, np.random.default_rng(0))
    np.testing.assert_allclose(out, [[2 - g, -2 + g]], atol=5e-5)


def sq_dists(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float64) - m) ** 2).sum(axis=1)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["min_max", "min_sum"]),
    st.sampled_from(["unit_vec", "sign", "std"]),
    st.integers(2, 10),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
)
def test_constraint_holds_and_is_tight(rule: str, dev: str, h: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(0.2, 1, (h, d))
    out = create_update_attack(rule, dev_type=dev)(x.astype(np.float32), 2, np.random.default_rng(0))
    m = out[0].astype(np.float64)
    pair = np.array([sq_dists(x, x[i]) for i in range(h)])
    mu = x.mean(0)
    delta = {"unit_vec": mu / np.linalg.norm(mu), "sign": np.sign(mu), "std": x.std(0, ddof=1)}[dev]
    gamma = float(np.dot(mu - m, delta) / np.dot(delta, delta))
    np.testing.assert_allclose(m, mu - gamma * delta, rtol=1e-4, atol=1e-4)

    def stat(v: np.ndarray) -> float:
        return float(sq_dists(x, v).max() if rule == "min_max" else sq_dists(x, v).sum())

    bound = float(pair.max() if rule == "min_max" else pair.sum(1).min())
    assert stat(m) <= bound * (1 + 1e-5) + 1e-6
    if gamma < 20 - 1e-3:  # below the search's cap, a slightly larger gamma must break the constraint
        assert stat(mu - (gamma + 1e-3) * delta) > bound * (1 - 1e-5)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="dev_type must be one of unit_vec, sign, std"):
        create_update_attack("min_max", dev_type="l2")
    with pytest.raises(ValueError, match="gamma_init"):
        create_update_attack("min_sum", gamma_init=0)


def test_minmax_pinned() -> None:
    honest = np.random.default_rng(7).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        create_update_attack("min_max")(honest, 1, np.random.default_rng(0))[0],
        [0.436385, 0.403823, 1.269512],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        create_update_attack("min_sum", dev_type="std")(honest, 1, np.random.default_rng(0))[0],
        [-0.299244, -0.435364, -0.468744],
        atol=1e-5,
    )
