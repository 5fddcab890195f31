"""Central DP (DP-FedAvg): clipping, declared sensitivity and refusal, the noise is really there,
pinned ε per round, calibration round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from stamen.privacy.accounting import epsilon_after
from stamen.server.aggregators import FunctionRule, RuleTraits, create
from stamen.server.privacy.central import (
    BudgetExhausted,
    CentralDP,
    CentralDPRule,
    clip_rows,
    declared_sensitivity,
)

DELTA = 1e-5


# --- clip_rows ---


def test_clip_rows_hand_computed() -> None:
    stack = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [0.0, -2.0]], dtype=np.float32)
    norms = clip_rows(stack, 1.0)
    np.testing.assert_allclose(norms, [5.0, 0.5, 0.0, 2.0])
    np.testing.assert_allclose(stack, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [0.0, -1.0]], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    stack=arrays(
        np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=st.floats(-1e3, 1e3, width=32)
    ),
    clip=st.floats(1e-3, 1e3),
)
def test_clip_rows_bounds_norm_and_keeps_direction(stack: np.ndarray, clip: float) -> None:
    before = stack.astype(np.float64)
    norms = clip_rows(stack, clip)
    np.testing.assert_allclose(norms, np.linalg.norm(before, axis=1), rtol=1e-6)
    after = np.linalg.norm(stack.astype(np.float64), axis=1)
    assert np.all(after <= clip * (1 + 1e-5))
    for row0, row1, n in zip(before, stack, norms, strict=True):
        if n <= clip:
            np.testing.assert_array_equal(row0, row1)  # untouched
        else:
            np.testing.assert_allclose(row1, row0 * (clip / n), rtol=1e-5, atol=1e-30)


def test_clip_rows_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="clip"):
        clip_rows(np.ones((2, 2), np.float32), 0.0)
    with pytest.raises(ValueError, match="float32"):
        clip_rows(np.ones((2, 2), np.float64), 1.0)


# --- declared sensitivity ---


def test_mean_declares_c_over_n() -> None:
    assert declared_sensitivity(create("mean"), 10, 2.0, "mean") == pytest.approx(0.2)


def test_fedavg_is_refused_with_a_clear_error() -> None:
    msg = "aggregation fedavg declares no L2 sensitivity"
    with pytest.raises(ValueError, match=msg):
        declared_sensitivity(create("fedavg"), 10, 1.0, "fedavg")


def test_undeclared_and_invalid_rules_are_refused() -> None:
    def median(updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.median(updates, axis=0)

    with pytest.raises(ValueError, match="median declares no L2 sensitivity"):
        declared_sensitivity(FunctionRule(median), 5, 1.0, "median")
    bad = FunctionRule(median, RuleTraits(l2_sensitivity=lambda n, c: float("nan")))
    with pytest.raises(ValueError, match="invalid L2 sensitivity"):
        declared_sensitivity(bad, 5, 1.0, "median")
    with pytest.raises(ValueError, match="n"):
        declared_sensitivity(create("mean"), 0, 1.0, "mean")


def test_composed_aggregators() -> None:
    from stamen.server.aggregators.compose import build_aggregator

    assert declared_sensitivity(build_aggregator("mean"), 4, 1.0, "mean") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="fedavg declares no L2 sensitivity"):
        declared_sensitivity(build_aggregator("fedavg"), 4, 1.0, "fedavg")
    with pytest.raises(ValueError, match="pre-aggregators never do"):
        declared_sensitivity(build_aggregator("mean", pre=("bucketing",)), 4, 1.0, "bucketing -> mean")


def test_central_dp_refuses_fedavg() -> None:
    dp = CentralDP(1.0, 1.0, 5, 10, 3)
    with pytest.raises(ValueError, match="refuses"):
        dp.sensitivity(create("fedavg"), "fedavg")
    assert dp.sensitivity(create("mean"), "mean") == pytest.approx(1.0 / 5)


def test_central_dp_rule_releases_empty_rounds_and_guards_the_budget() -> None:
    dp = CentralDP.from_target(2.0, DELTA, 1.0, 5, 10, rounds=2, seed=3)
    rule = CentralDPRule(create("mean"), dp, "mean", budget=2.0)
    assert rule.traits.releases_empty and rule.epsilon() is None
    out = rule(np.zeros((0, 6), np.float32))  # no accepted update: noise is still released
    assert out.shape == (6,) and np.any(out != 0) and rule.epsilon() is not None
    rule(np.ones((5, 6), np.float32), np.ones(5))
    assert rule.epsilon() == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(BudgetExhausted, match="round 3 would spend"):
        rule(np.ones((5, 6), np.float32), np.ones(5))
    assert dp.rounds_done == 2  # the refused round released nothing


# --- the noise is really there ---


def test_released_noise_has_the_calibrated_std() -> None:
    """Std of the released aggregate's noise within 1 % of z·C/m (n = 2e5 draws: the standard error
    of a std estimate is 0.16 %); missing noise (0), noise scaled by C instead of C/m (5×) or by the
    replace-one 2C/m (2×) all fail."""
    z, clip, m = 1.3, 2.0, 5
    dp = CentralDP(z, clip, m, 50, 10, seed=7)
    s = dp.sensitivity(create("mean"), "mean")
    released = dp.privatize(np.zeros(200_000, np.float32), m, s)
    assert released.dtype == np.float32
    assert np.std(released) == pytest.approx(z * clip / m, rel=0.01)
    assert abs(float(np.mean(released))) < 5 * z * clip / m / np.sqrt(released.size)
    assert stats.kstest(released / (z * clip / m), "norm").pvalue > 1e-3  # Gaussian, not e.g. uniform


def test_end_to_end_round_noise_around_the_clipped_mean() -> None:
    """clip_rows -> mean -> privatize over many independent rounds: the release is unbiased for the
    clipped mean and its per-coordinate variance is (z·C/m)²."""
    rng = np.random.default_rng(0)
    z, clip, m, d = 0.8, 1.0, 4, 64
    stack = rng.normal(0, 3.0, size=(m, d)).astype(np.float32)  # norms ~24 >> C: all clipped
    clip_rows(stack, clip)
    agg = create("mean")
    target = agg(stack)
    dp = CentralDP(z, clip, m, 8, 3000, seed=1)
    s = dp.sensitivity(agg, "mean")
    releases = np.empty((3000, d), np.float32)
    for r in range(3000):
        releases[r] = dp.privatize(target, m, s)
        dp.rounds_done += 1  # next round's noise stream without paying the accountant 3000 times
    noise = releases - target
    assert np.var(noise) == pytest.approx((z * clip / m) ** 2, rel=0.02)
    np.testing.assert_allclose(releases.mean(axis=0), target, atol=6 * z * clip / m / np.sqrt(3000))


def test_fixed_denominator_rescale_and_zero_noise_is_exact() -> None:
    dp = CentralDP(0.0, 1.0, 4, 8, 2)
    agg = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(dp.privatize(agg, 4, 0.25), agg)
    np.testing.assert_array_equal(dp.privatize(agg, 2, 0.25), agg * 0.5)  # sum of 2 rows / m=4
    # a Poisson draw above m = 4: still divided by the expected size m (McMahan et al. 2018, f~_f)
    np.testing.assert_array_equal(dp.privatize(agg, 6, 0.25), agg * 1.5)
    with pytest.raises(ValueError, match="n_accepted"):
        dp.privatize(agg, 9, 0.25)  # more rows than the N = 8 clients
    assert dp.step() == float("inf")


def test_noise_is_reproducible_per_seed_and_round() -> None:
    a, b = CentralDP(1.0, 1.0, 2, 4, 3, seed=3), CentralDP(1.0, 1.0, 2, 4, 3, seed=3)
    x = np.zeros(16, np.float32)
    np.testing.assert_array_equal(a.privatize(x, 2, 0.5), b.privatize(x, 2, 0.5))
    first = a.privatize(x, 2, 0.5)
    a.step()
    assert not np.array_equal(first, a.privatize(x, 2, 0.5))
    assert not np.array_equal(first, CentralDP(1.0, 1.0, 2, 4, 3, seed=4).privatize(x, 2, 0.5))


# --- accountant per round ---


def test_pinned_epsilon_per_round() -> None:
    dp = CentralDP(1.0, 1.0, 10, 100, 5, seed=0)
    assert dp.sample_rate == pytest.approx(0.1)
    eps = [dp.step() for _ in range(3)]
    np.testing.assert_allclose(eps, [2.133005995430793, 2.412889750604902, 2.606512338807164], rtol=1e-9)
    assert dp.epsilon == eps[-1] and dp.rounds_done == 3


@pytest.mark.slow
def test_calibration_from_target_round_trip() -> None:
    dp = CentralDP.from_target(4.0, DELTA, 1.0, 10, 50, 20)
    for _ in range(19):
        dp.rounds_done += 1
    final = dp.step()
    assert 4.0 * (1 - 2e-3) <= final <= 4.0
    assert final == pytest.approx(epsilon_after(dp.noise_multiplier, 0.2, 20, DELTA))


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="clients_per_round"):
        CentralDP(1.0, 1.0, 11, 10, 3)
    with pytest.raises(ValueError, match="clipping_norm"):
        CentralDP(1.0, 0.0, 1, 10, 3)
    with pytest.raises(ValueError, match="delta"):
        CentralDP(1.0, 1.0, 1, 10, 3, delta=2.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        CentralDP(-1.0, 1.0, 1, 10, 3)
