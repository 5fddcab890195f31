"""RQM accountant: hand-computed laws and divergences (m = 2, 3), closed form vs keep-pattern
enumeration and vs the codec's sampler, worst-case pair and monotonicity properties, composition,
pinned ε values, the per-client accountant and calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.privacy.rqm_rdp import (
    DEFAULT_ORDERS,
    RqmAccountant,
    RqmParams,
    calibrate_delta,
    compose,
    coordinate_rdp,
    critical_inputs,
    epsilon,
    log_output_pmf,
    output_pmf,
    output_pmf_enumerated,
    rdp_curve,
    rdp_to_dp,
    renyi_divergence,
    renyi_divergence_log,
)
from stamen.protocols.codecs.rqm import quantize


def test_two_levels_by_hand() -> None:
    c, d = 1.0, 0.5  # X = 1.5; P(z=1 | x) = (x + X) / 2X
    p = RqmParams(c, d, 2, 0.3)
    hi, lo = (c + 1.5) / 3.0, (-c + 1.5) / 3.0  # 5/6 and 1/6
    np.testing.assert_allclose(output_pmf([c, -c], p), [[1 - hi, hi], [1 - lo, lo]])
    for alpha in (1.5, 2.0, 10.0):
        moment = hi**alpha * lo ** (1 - alpha) + (1 - hi) ** alpha * (1 - lo) ** (1 - alpha)
        hand = math.log(moment) / (alpha - 1)
        assert coordinate_rdp(alpha, p)[0] == pytest.approx(hand, rel=1e-12)
    # pure DP limit: e^eps = 1 + 2c/delta (notes §4), approached as alpha grows
    assert coordinate_rdp(1e4, p)[0] == pytest.approx(math.log(1 + 2 * c / d), rel=1e-3)


def test_three_levels_by_hand() -> None:
    # levels -2, 0, 2 (c = delta = 1); for x <= 0 the middle level is kept w.p. q:
    # P_x = [q(-x/X) + (1-q)(X-x)/2X, q(x+X)/X, (1-q)(x+X)/2X]; at x = -1, q = 1/2: [5/8, 1/4, 1/8]
    p = RqmParams(1.0, 1.0, 3, 0.5)
    np.testing.assert_allclose(output_pmf(-1.0, p)[0], [0.625, 0.25, 0.125])
    np.testing.assert_allclose(output_pmf(1.0, p)[0], [0.125, 0.25, 0.625])
    # D_2(P_-1 || P_1) = log(sum P^2 / Q) = log(3.125 + 0.25 + 0.025) = log 3.4, the worst pair
    eps, x, x2 = coordinate_rdp(2.0, p)
    assert eps == pytest.approx(math.log(3.4), rel=1e-12) and {x, x2} == {-1.0, 1.0}
    assert renyi_divergence(np.array([0.625, 0.25, 0.125]), np.array([0.125, 0.25, 0.625]), 2.0) == (
        pytest.approx(math.log(3.4))
    )
    assert critical_inputs(p).tolist() == [-1.0, 0.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.floats(0.0, 1.0), st.floats(0.05, 20.0), st.floats(-1.5, 1.5))
def test_closed_form_matches_enumerating_keep_patterns(m: int, q: float, ext: float, x: float) -> None:
    p = RqmParams(1.0, ext, m, q)
    exact = output_pmf(x, p)[0]
    np.testing.assert_allclose(exact, output_pmf_enumerated(x, p), atol=1e-12)
    assert exact.sum() == pytest.approx(1.0)
    assert (exact * p.levels()).sum() == pytest.approx(np.clip(x, -1, 1))  # unbiased


@pytest.mark.parametrize(("m", "q", "x"), [(6, 0.4, -1.0), (6, 0.4, 0.23), (9, 0.8, 0.61), (4, 0.0, -0.5)])
def test_the_codec_samples_the_exact_law(m: int, q: float, x: float) -> None:
    n = 60_000
    z = quantize(np.full(n, x), 1.0, 0.5, m, q, np.random.default_rng(m))
    freq = np.bincount(z.astype(int), minlength=m) / n
    law = output_pmf(x, RqmParams(1.0, 0.5, m, q))[0]
    assert np.all(np.abs(freq - law) <= 5 * np.sqrt(law * (1 - law) / n) + 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 10), st.floats(0.0, 0.95), st.floats(0.05, 5.0), st.floats(1.1, 50.0), st.data())
def test_no_input_pair_beats_the_computed_worst_case(
    m: int, q: float, ext: float, alpha: float, data: st.DataObject
) -> None:
    p = RqmParams(1.0, ext, m, q)
    eps, _, _ = coordinate_rdp(alpha, p)
    xs = data.draw(st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=6))
    logs = log_output_pmf(xs, p)  # log space: q = 5e-324 must not underflow to a false zero
    for i in range(len(xs)):
        for k in range(len(xs)):
            assert renyi_divergence_log(logs[i], logs[k], alpha) <= eps * (1 + 1e-9) + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 10), st.floats(0.0, 0.9), st.floats(0.05, 5.0), st.floats(1.1, 30.0))
def test_monotone_in_alpha_q_and_delta_and_scale_free(m: int, q: float, ext: float, alpha: float) -> None:
    base = coordinate_rdp(alpha, RqmParams(1.0, ext, m, q))[0]
    assert coordinate_rdp(alpha * 1.5, RqmParams(1.0, ext, m, q))[0] >= base - 1e-12  # in alpha
    assert coordinate_rdp(alpha, RqmParams(1.0, ext, m, min(q + 0.05, 0.99)))[0] >= base - 1e-12  # in q
    assert coordinate_rdp(alpha, RqmParams(1.0, ext * 1.5, m, q))[0] <= base + 1e-12  # in delta
    assert coordinate_rdp(alpha, RqmParams(7.0, 7.0 * ext, m, q))[0] == pytest.approx(base, rel=1e-9)


def test_composition_conversion_and_pinned_epsilons() -> None:
    p = RqmParams(1.0, 1.0, 16, 0.5)
    curve = rdp_curve(DEFAULT_ORDERS, p)
    np.testing.assert_allclose(compose(curve, 100, 3), 300 * curve)
    eps1 = rdp_to_dp(DEFAULT_ORDERS, curve, 1e-5)[0]
    eps7 = rdp_to_dp(DEFAULT_ORDERS, curve, 1e-7)[0]
    assert eps1 < eps7 < epsilon(p, coordinates=2, rounds=1, target_delta=1e-7)
    assert rdp_to_dp(DEFAULT_ORDERS, 0 * curve, 1e-5)[0] == 0.0
    pinned = {
        (1.0, 1.0, 16, 0.5, 1, 1): 6.676706528867166,
        (1.0, 4.0, 4, 0.3, 10, 5): 23.41166162101802,
        (0.05, 0.2, 8, 0.5, 1000, 1): 910.863821135392,  # composing over d coordinates is costly
    }
    for (c, d, m, q, dims, rounds), value in pinned.items():
        got = epsilon(RqmParams(c, d, m, q), coordinates=dims, rounds=rounds, target_delta=1e-5)
        assert got == pytest.approx(value, rel=1e-9), (c, d, m, q, dims, rounds, got)
    # m = 2 is pure eps0-DP per coordinate: never worse than basic composition of eps0
    eps0 = math.log(1 + 2 * 1.0 / 3.0)
    assert epsilon(RqmParams(1.0, 3.0, 2, 0.5), coordinates=5, rounds=4, target_delta=1e-5) <= 20 * eps0


def test_accountant_counts_participations_per_client() -> None:
    acc = RqmAccountant(RqmParams(1.0, 4.0, 4, 0.3), coordinates=10)
    assert acc.epsilon(1e-5) == 0.0
    acc.step(["a", "b"])
    acc.step(["a"])
    acc.step(["a", "a"])  # two messages in one round (a FedBuff buffer): charged twice
    worst = epsilon(RqmParams(1.0, 4.0, 4, 0.3), coordinates=10, rounds=4, target_delta=1e-5)
    assert acc.epsilon(1e-5) == pytest.approx(worst) == acc.epsilon(1e-5, client="a")
    assert acc.epsilon(1e-5, client="b") < worst and acc.epsilon(1e-5, client="zzz") == 0.0


@pytest.mark.slow
def test_calibration_and_edge_cases() -> None:
    d = calibrate_delta(2.0, c=1.0, m=8, q=0.5, coordinates=1, rounds=1, target_delta=1e-5)
    got = epsilon(RqmParams(1.0, d, 8, 0.5), coordinates=1, rounds=1, target_delta=1e-5)
    assert got <= 2.0 and got > 1.99
    assert math.isinf(coordinate_rdp(2.0, RqmParams(1.0, 1.0, 5, 1.0))[0])  # q = 1: some z impossible
    assert math.isfinite(coordinate_rdp(2.0, RqmParams(1.0, 1.0, 5, 0.0))[0])
    bads = [(0.0, 1.0, 4, 0.5), (1.0, 0.0, 4, 0.5), (1.0, 1.0, 1, 0.5), (1.0, 1.0, 4, 1.5)]
    bads.append((1.0, 1.0, 300, 0.5))
    for bad in bads:
        with pytest.raises(ValueError):
            RqmParams(*bad)
    with pytest.raises(ValueError, match="alpha"):
        coordinate_rdp(1.0, RqmParams(1.0, 1.0, 4, 0.5))
    with pytest.raises(ValueError, match="target_delta"):
        rdp_to_dp(DEFAULT_ORDERS, np.ones(len(DEFAULT_ORDERS)), 0.0)
    assert RqmParams.from_stage({"c": 0.1, "delta": 0.1, "m": 16, "q": 0.5}) == RqmParams(0.1, 0.1, 16, 0.5)


def test_the_noise_is_in_the_released_aggregate() -> None:
    """Mean of n clients' RQM outputs: unbiased, with exactly the variance the output law predicts."""
    p, n, trials = RqmParams(1.0, 0.5, 8, 0.5), 200, 2000
    xs = np.random.default_rng(0).uniform(-1, 1, n)
    law = output_pmf(xs, p)  # (n, m)
    predicted = float(((law * p.levels() ** 2).sum(axis=1) - xs**2).sum() / n**2)
    z = quantize(np.tile(xs, trials), p.c, p.delta, p.m, p.q, np.random.default_rng(1))
    means = p.levels()[z.astype(int)].reshape(trials, n).mean(axis=1)  # (trials,) released aggregates
    assert abs(means.mean() - xs.mean()) < 5 * math.sqrt(predicted / trials)
    assert abs(means.var(ddof=1) / predicted - 1) < 5 * math.sqrt(2 / (trials - 1))  # ~16 %
    assert predicted > 1e-3  # and it is not negligible: the aggregate is really noisy
