"""Accountant: pinned ε, closed-form and exact references, calibration round trip, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from stamen.privacy.accounting import (
    RDP_ORDERS,
    calibrate_noise_multiplier,
    epsilon_after,
    epsilon_of_history,
)

DELTA = 1e-5


def gaussian_rdp_epsilon(z: float, steps: int, delta: float) -> float:
    """Slow reference for q = 1: RDP of the Gaussian ``α T / (2 z²)`` (Mironov 2017, Prop. 7) and
    Balle et al. 2020's conversion, minimised over the same orders, in plain numpy."""
    a = np.asarray(RDP_ORDERS, dtype=np.float64)
    rdp = a * steps / (2 * z * z)
    return float(np.min(rdp + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1)))


def exact_gaussian_epsilon(z: float, steps: int, delta: float) -> float:
    """Tight ε of T Gaussian mechanisms with multiplier z (= one with z / √T), Balle & Wang 2018 Thm 8:
    ``δ(ε) = Φ(1/(2s) - εs) - e^ε Φ(-1/(2s) - εs)``, ``s = z / √T``."""
    s = z / math.sqrt(steps)

    def gap(eps: float) -> float:
        return float(stats.norm.cdf(0.5 / s - eps * s) - math.exp(eps) * stats.norm.cdf(-0.5 / s - eps * s))

    return float(optimize.brentq(lambda e: gap(e) - delta, 0.0, 500.0))


# --- pinned values (opacus 1.6 RDP / PRV; a change in the accountant or the orders shows up here) ---


@pytest.mark.parametrize(
    ("z", "q", "steps", "rdp", "prv"),
    [
        (1.0, 0.1, 100, 7.899255002434629, 7.057056439561379),
        (2.0, 0.01, 1000, 0.6861853363943466, 0.6320840536415899),
        (1.1, 1.0, 10, 16.856677599575104, 15.793372979652471),
    ],
)
def test_pinned_epsilon(z: float, q: float, steps: int, rdp: float, prv: float) -> None:
    assert epsilon_after(z, q, steps, DELTA) == pytest.approx(rdp, rel=1e-9)
    assert epsilon_after(z, q, steps, DELTA, "prv") == pytest.approx(prv, rel=1e-6)


# --- hand-computed / reference cases ---


@pytest.mark.parametrize(("z", "steps"), [(2.0, 10), (0.8, 3), (5.0, 50)])
def test_no_sampling_equals_closed_form_rdp(z: float, steps: int) -> None:
    ref = gaussian_rdp_epsilon(z, steps, DELTA)
    assert epsilon_after(z, 1.0, steps, DELTA) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize(("z", "steps"), [(2.0, 10), (1.0, 1), (4.0, 30)])
def test_accountants_bracket_the_exact_gaussian(z: float, steps: int) -> None:
    exact = exact_gaussian_epsilon(z, steps, DELTA)
    assert epsilon_after(z, 1.0, steps, DELTA) >= exact  # RDP is an upper bound
    assert epsilon_after(z, 1.0, steps, DELTA, "prv") == pytest.approx(exact, abs=0.03)


def test_trivial_cases() -> None:
    assert epsilon_after(1.0, 0.5, 0, DELTA) == 0.0
    assert epsilon_after(0.0, 0.5, 3, DELTA) == math.inf
    assert epsilon_of_history([], DELTA) == 0.0
    # composing two segments equals one segment of the summed steps when (z, q) agree
    two = epsilon_of_history([(1.0, 0.1, 40), (1.0, 0.1, 60)], DELTA)
    assert two == pytest.approx(epsilon_after(1.0, 0.1, 100, DELTA), rel=1e-12)


# --- properties ---


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(z=st.floats(0.5, 5.0), q=st.floats(0.01, 1.0), steps=st.integers(1, 200), extra=st.integers(1, 50))
def test_epsilon_monotone_in_steps_and_noise(z: float, q: float, steps: int, extra: int) -> None:
    base = epsilon_after(z, q, steps, DELTA)
    assert math.isfinite(base) and base > 0
    assert epsilon_after(z, q, steps + extra, DELTA) >= base
    assert epsilon_after(z * 1.5, q, steps, DELTA) <= base


# --- calibration ---


@pytest.mark.filterwarnings("ignore:Optimal order")  # opacus' own search, on its shorter order grid
@pytest.mark.parametrize(
    ("target", "q", "steps"),
    [(1.0, 1.0, 10), (2.0, 0.1, 100), pytest.param(8.0, 0.4, 30, marks=pytest.mark.slow), (4.0, 0.04, 460)],
)
def test_calibration_round_trip_and_matches_opacus(target: float, q: float, steps: int) -> None:
    from opacus.accountants.utils import get_noise_multiplier

    z = calibrate_noise_multiplier(target, DELTA, q, steps)
    eps = epsilon_after(z, q, steps, DELTA)
    assert target * (1 - 2e-3) <= eps <= target
    ref = get_noise_multiplier(target_epsilon=target, target_delta=DELTA, sample_rate=q, steps=steps)
    assert z == pytest.approx(ref, rel=0.01)


def test_calibration_with_prv_is_tighter() -> None:
    z_rdp = calibrate_noise_multiplier(2.0, DELTA, 0.1, 100)
    z_prv = calibrate_noise_multiplier(2.0, DELTA, 0.1, 100, "prv")
    assert z_prv < z_rdp
    assert epsilon_after(z_prv, 0.1, 100, DELTA, "prv") <= 2.0


def test_calibration_unreachable_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        calibrate_noise_multiplier(1e-4, DELTA, 1.0, 1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": -1}, "steps"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    args = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "delta": DELTA, "accountant": "rdp"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        epsilon_after(**args)


def test_bad_calibration_arguments() -> None:
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_noise_multiplier(0.0, DELTA, 0.1, 10)
    with pytest.raises(ValueError, match="steps"):
        calibrate_noise_multiplier(1.0, DELTA, 0.1, 0)
