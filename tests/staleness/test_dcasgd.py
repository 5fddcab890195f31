"""Test trio for DC-ASGD first-order compensation (sign convention delta = local - global)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.protocols import ValidationError
from stamen.server.staleness import ModelVersions, compensation


def _versions(drift: np.ndarray) -> ModelVersions:
    stale = np.zeros_like(drift)
    return ModelVersions({"w": stale + drift}, {"w": stale}, 10)


def test_dcasgd_hand_computed() -> None:
    delta = {"w": np.array([0.1, -0.2], np.float32)}
    out = compensation.create("dcasgd", lam=4.0)(delta, 3, _versions(np.array([1.0, 2.0], np.float32)))
    # 0.1 - 4 * 0.01 * 1 = 0.06 ; -0.2 - 4 * 0.04 * 2 = -0.52
    np.testing.assert_allclose(out["w"], [0.06, -0.52], rtol=1e-6)


_vec = arrays(np.float32, (6,), elements=st.floats(-2, 2, width=32))


@settings(max_examples=80, deadline=None)
@given(g=_vec, drift=_vec, eta=st.floats(1e-3, 1.0), lam_g=st.floats(0, 5))
def test_matches_dcasgd_gradient_form(g: np.ndarray, drift: np.ndarray, eta: float, lam_g: float) -> None:
    """DC-ASGD corrects the gradient: g + lam_g g*g*(w_t - w_stale), stepped as -eta * that."""
    delta = {"w": (-eta * g.astype(np.float64)).astype(np.float32)}
    out = compensation.create("dcasgd", lam=lam_g / eta)(delta, 2, _versions(drift))["w"]
    d = delta["w"].astype(np.float64)
    g_eff = -d / eta  # the gradient the float32 delta encodes
    reference = -eta * (g_eff + lam_g * g_eff * g_eff * drift.astype(np.float64))
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(delta=_vec, drift=_vec, tau=st.integers(1, 100))
def test_lam_zero_is_direct_and_correction_opposes_drift(
    delta: np.ndarray, drift: np.ndarray, tau: int
) -> None:
    d = {"w": delta}
    np.testing.assert_array_equal(
        compensation.create("dcasgd", lam=0.0)(d, tau, _versions(drift))["w"], delta
    )
    out = compensation.create("dcasgd")(d, tau, _versions(drift))["w"]
    change = out.astype(np.float64) - delta
    assert np.all(change * drift <= 1e-12)  # the correction never points along the drift


def test_dcasgd_pinned_value() -> None:
    rng = np.random.default_rng(11)
    delta = {"w": (0.1 * rng.standard_normal(5)).astype(np.float32)}
    drift = rng.standard_normal(5).astype(np.float32)
    out = compensation.create("dcasgd")(delta, 5, _versions(drift))["w"]
    np.testing.assert_allclose(out, [0.003444, 0.09384, 0.125836, -0.058811, -0.023236], rtol=1e-4)


def test_dcasgd_needs_matching_versions() -> None:
    policy = compensation.create("dcasgd")
    delta = {"w": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match="needs the current and the stale base model"):
        policy(delta, 2)
    with pytest.raises(ValidationError, match="current model has no tensor 'w'"):
        policy(delta, 2, ModelVersions({}, {"w": np.ones(3)}, 2))
    with pytest.raises(ValidationError, match=r"stale_base\['w'\] has shape \(2,\)"):
        policy(delta, 2, ModelVersions({"w": np.ones(3)}, {"w": np.ones(2)}, 2))
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        compensation.create("dcasgd", lam=-1)
