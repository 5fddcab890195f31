"""Local DP: whole-update clip + Gaussian noise, per-client ε from the rounds it took part in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.client.privacy import ROUNDS_KEY, clip_and_noise, privatize_update
from stamen.client.state import ClientState
from stamen.privacy.accounting import RDP_ORDERS, epsilon_after
from stamen.privacy.local import calibrate_local_noise_multiplier, local_epsilon

DELTA = 1e-5


def test_clip_hand_computed_over_all_tensors() -> None:
    delta = {"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32)}
    out, norm = clip_and_noise(delta, 1.0, 0.0, np.random.default_rng(0))
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(out["a"], [0.6], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [[0.8]], rtol=1e-6)
    assert list(out) == ["a", "b"] and out["b"].shape == (1, 1) and out["b"].dtype == np.float32
    np.testing.assert_array_equal(delta["a"], [3.0])  # input untouched


def test_small_update_is_not_clipped() -> None:
    delta = {"w": np.array([0.3, -0.4], np.float32)}
    out, norm = clip_and_noise(delta, 1.0, 0.0, np.random.default_rng(0))
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(out["w"], delta["w"])
    zero, n0 = clip_and_noise({"w": np.zeros(3, np.float32)}, 1.0, 0.0, np.random.default_rng(0))
    assert n0 == 0.0 and not np.any(zero["w"])


@settings(max_examples=50, deadline=None)
@given(
    a=arrays(np.float32, st.integers(1, 30), elements=st.floats(-100, 100, width=32)),
    b=arrays(np.float32, st.integers(1, 30), elements=st.floats(-100, 100, width=32)),
    clip=st.floats(1e-2, 50),
)
def test_clip_bounds_the_joint_norm(a: np.ndarray, b: np.ndarray, clip: float) -> None:
    out, norm = clip_and_noise({"a": a, "b": b}, clip, 0.0, np.random.default_rng(0))
    joint = np.sqrt(np.sum(out["a"].astype(np.float64) ** 2) + np.sum(out["b"].astype(np.float64) ** 2))
    assert joint <= clip * (1 + 1e-5)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    np.testing.assert_allclose(out["a"], a * scale, rtol=1e-5, atol=1e-30)


def test_noise_is_there_with_std_z_times_c() -> None:
    """Per-coordinate std within 1 % of z·C on 2e5 draws (standard error 0.16 %); missing noise, or
    noise scaled by the 2C sensitivity instead of C, fails."""
    z, clip = 0.7, 2.0
    delta = {"a": np.zeros((400, 250), np.float32), "b": np.zeros(100_000, np.float32)}
    out, _ = clip_and_noise(delta, clip, z, np.random.default_rng(1))
    allv = np.concatenate([out["a"].ravel(), out["b"]])
    assert np.std(allv) == pytest.approx(z * clip, rel=0.01)
    assert abs(float(allv.mean())) < 5 * z * clip / np.sqrt(allv.size)
    again, _ = clip_and_noise(delta, clip, z, np.random.default_rng(1))
    np.testing.assert_array_equal(again["a"], out["a"])  # reproducible from the generator


def test_bad_parameters() -> None:
    d = {"w": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="clip"):
        clip_and_noise(d, 0.0, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="noise_multiplier"):
        clip_and_noise(d, 1.0, -0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rounds_participated"):
        local_epsilon(1.0, -1, DELTA)


# --- per-client ε ---


def test_local_epsilon_hand_computed_closed_form() -> None:
    """z = 4 on a 2C-sensitive update is a Gaussian mechanism with multiplier 2; over T = 10 rounds
    its RDP is α·10/(2·2²) and Balle et al.'s conversion gives ε."""
    a = np.asarray(RDP_ORDERS, dtype=np.float64)
    ref = np.min(a * 10 / 8 + np.log((a - 1) / a) - (np.log(DELTA) + np.log(a)) / (a - 1))
    assert local_epsilon(4.0, 10, DELTA) == pytest.approx(ref, rel=1e-12)
    assert local_epsilon(4.0, 10, DELTA) == pytest.approx(epsilon_after(2.0, 1.0, 10, DELTA), rel=1e-12)


def test_local_epsilon_pinned_and_trivial() -> None:
    assert local_epsilon(4.0, 10, DELTA) == pytest.approx(8.079406222420491, rel=1e-9)
    assert local_epsilon(10.0, 3, DELTA) == pytest.approx(1.445621967952188, rel=1e-9)
    assert local_epsilon(4.0, 10, DELTA, "prv") == pytest.approx(7.521641007073685, rel=1e-6)
    assert local_epsilon(1.0, 0, DELTA) == 0.0
    assert local_epsilon(0.0, 1, DELTA) == float("inf")


@settings(max_examples=20, deadline=None)
@given(z=st.floats(0.5, 20.0), rounds=st.integers(1, 100))
def test_local_epsilon_grows_with_rounds(z: float, rounds: int) -> None:
    assert local_epsilon(z, rounds + 1, DELTA) >= local_epsilon(z, rounds, DELTA) > 0


def test_local_calibration_round_trip() -> None:
    z = calibrate_local_noise_multiplier(8.0, DELTA, 10)
    assert 8.0 * (1 - 2e-3) <= local_epsilon(z, 10, DELTA) <= 8.0
    assert local_epsilon(z, 5, DELTA) < 8.0  # a client sampled half as often spends less


def test_privatize_update_counts_rounds_and_reports_growing_epsilon() -> None:
    state = ClientState()
    rng = np.random.default_rng(0)
    delta = {"w": np.full(8, 3.0, np.float32)}
    eps = []
    for r in range(1, 4):
        out, metrics = privatize_update(delta, 1.0, 5.0, DELTA, rng, state)
        assert state.scalars[ROUNDS_KEY] == r and metrics["dp-rounds"] == r
        assert set(metrics) == {"epsilon", "dp-rounds"}  # no pre-clipping norm: it is data
        eps.append(metrics["epsilon"])
        assert eps[-1] == pytest.approx(local_epsilon(5.0, r, DELTA))
        assert out["w"].shape == (8,)
    assert eps[0] < eps[1] < eps[2]


# --- only the trained tensors are privatized ---


def test_only_declared_tensors_are_clipped_hand_computed() -> None:
    """The norm and the clip are over the declared tensors; the frozen one stays exactly zero."""
    delta = {
        "frozen": np.zeros((2, 2), np.float32),
        "a": np.array([3.0], np.float32),
        "b": np.array([4.0], np.float32),
    }
    out, norm = clip_and_noise(delta, 1.0, 0.0, np.random.default_rng(0), noised=("a", "b"))
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.6, 0.8], rtol=1e-6)
    assert not np.any(out["frozen"]) and list(out) == ["frozen", "a", "b"]


def test_noise_only_on_declared_tensors_with_std_z_times_c() -> None:
    """std of the noised tensor within 1 % of z·C (2e5 draws); the undeclared tensor gets none."""
    z, clip = 1.3, 0.5
    delta = {"frozen": np.zeros(50_000, np.float32), "lora_A": np.zeros((400, 500), np.float32)}
    out, _ = clip_and_noise(delta, clip, z, np.random.default_rng(2), noised=["lora_A"])
    assert np.std(out["lora_A"]) == pytest.approx(z * clip, rel=0.01)
    assert not np.any(out["frozen"])


def test_undeclared_nonzero_tensor_is_refused_not_leaked() -> None:
    delta = {"w": np.array([0.0, 1e-30], np.float32), "a": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match=r"not declared trained.*\bw\b|\['w'\]"):
        clip_and_noise(delta, 1.0, 1.0, np.random.default_rng(0), noised=["a"])
    with pytest.raises(ValueError, match="not in the update"):
        clip_and_noise(delta, 1.0, 1.0, np.random.default_rng(0), noised=["a", "w", "missing"])


def test_privatize_update_passes_the_trained_set_and_keeps_epsilon() -> None:
    """Restricting the noise does not change the accounting: same ε as noising everything."""
    delta = {"frozen": np.zeros(4, np.float32), "a": np.full(4, 2.0, np.float32)}
    out, metrics = privatize_update(
        delta, 1.0, 3.0, DELTA, np.random.default_rng(0), ClientState(), noised=["a"]
    )
    assert not np.any(out["frozen"]) and np.all(out["a"] != 0)
    assert "update-norm" not in metrics
    assert metrics["epsilon"] == pytest.approx(local_epsilon(3.0, 1, DELTA))
