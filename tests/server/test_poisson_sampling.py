"""Poisson client sampling for central DP (issue 13 §3): the draw, its use by the driver, the
fixed-denominator estimator, the accountant it matches, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.cli import main
from stamen.server.aggregators import create
from stamen.server.config import ServerConfig
from stamen.server.privacy.central import CentralDP, CentralDPRule
from stamen.server.privacy.statement import describe, privacy_statement
from stamen.server.sampling import draw_cohort, poisson_sample, resolve_sampling, sample_clients
from stamen.task.settings_load import load_settings

CENTRAL = [
    "privacy.mode=central",
    "privacy.calibration=fixed",
    "aggregation.rule=mean",
    "data.num_clients=10",
]
CENTRAL += ["clients.per_round=2"]


def test_inclusion_frequency_is_q_per_client() -> None:
    """Every client's share of 4000 rounds is q = 0.25 within 6 binomial standard deviations, and
    the mean cohort size is q·N; the size varies (Binomial(N, q)), empty draws included."""
    n, q, rounds = 20, 0.25, 4000
    counts = np.zeros(n)
    sizes = []
    for rnd in range(1, rounds + 1):
        cohort = poisson_sample(11, rnd, n, q)
        counts[cohort] += 1
        sizes.append(len(cohort))
    sd = np.sqrt(rounds * q * (1 - q))  # ≈ 27.4
    assert np.all(np.abs(counts - rounds * q) < 6 * sd)
    assert np.mean(sizes) == pytest.approx(q * n, abs=0.1)
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.15)
    assert min(sizes) == 0 and max(sizes) > q * n  # variable, empty draws happen (P = 0.75^20 ≈ 0.3 %)


def test_draw_depends_on_seed_and_round_only() -> None:
    a = poisson_sample(3, 5, 50, 0.2)
    poisson_sample(3, 6, 50, 0.2)  # other draws in between change nothing (no shared generator)
    sample_clients(3, 5, 50, 10)
    assert poisson_sample(3, 5, 50, 0.2) == a
    assert poisson_sample(3, 6, 50, 0.2) != a
    assert poisson_sample(4, 5, 50, 0.2) != a


def test_pinned_draws() -> None:
    assert poisson_sample(0, 1, 10, 0.3) == [6, 7]
    assert poisson_sample(7, 3, 20, 0.25) == [0, 5, 14, 15, 16]
    clients = [f"c-{i}" for i in range(10)]
    assert draw_cohort("poisson", 0, 1, clients, 3, 0.3) == ["c-6", "c-7"]
    assert draw_cohort("fixed", 0, 1, clients, 3, 0.3) == [clients[i] for i in sample_clients(0, 1, 10, 3)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 10_000), st.integers(0, 60), st.floats(0.0, 1.0))
def test_draw_is_a_sorted_subset_and_monotone_in_q(seed: int, rnd: int, n: int, q: float) -> None:
    cohort = poisson_sample(seed, rnd, n, q)
    assert cohort == sorted(set(cohort)) and all(0 <= i < n for i in cohort)
    # the same coins: a larger rate keeps everyone a smaller one took
    assert set(cohort) <= set(poisson_sample(seed, rnd, n, min(1.0, q + 0.1)))
    assert poisson_sample(seed, rnd, n, 0.0) == [] and poisson_sample(seed, rnd, n, 1.0) == list(range(n))


def test_bad_rate_and_scheme_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        poisson_sample(0, 1, 10, 1.5)
    with pytest.raises(ValueError, match="scheme"):
        draw_cohort("bernoulli", 0, 1, ["a"], 1, 0.5)


def test_auto_is_poisson_exactly_for_synchronous_central_dp() -> None:
    assert resolve_sampling("auto", "central", "sync") == "poisson"
    assert resolve_sampling("auto", "central", "fedbuff") == "fixed"
    assert resolve_sampling("auto", "off", "sync") == "fixed"
    assert resolve_sampling("auto", "local", "sync") == "fixed"
    assert resolve_sampling("fixed", "central", "sync") == "fixed"
    assert ServerConfig.from_settings(load_settings("smoke", CENTRAL)).sampling == "poisson"


def test_fixed_denominator_dp_fedavg_hand_computed() -> None:
    """McMahan et al. 2018's f~_f = Σ clip(Δ_k) / (q·N): three sampled rows over an expected cohort
    of m = 2 (q = 0.2, N = 10) — the denominator is 2, not the realised 3."""
    dp = CentralDP(0.0, 1.0, 2, 10, 5)  # z = 0: the estimator itself, exactly
    rule = CentralDPRule(create("mean"), dp, "mean")
    rows = np.array([[3.0, 4.0], [0.0, 0.5], [0.5, 0.0]], np.float32)  # row 0 clipped to [0.6, 0.8]
    np.testing.assert_allclose(rule(rows), [(0.6 + 0.0 + 0.5) / 2, (0.8 + 0.5 + 0.0) / 2], rtol=1e-6)
    np.testing.assert_array_equal(rule(np.zeros((0, 2), np.float32)), [0.0, 0.0])  # empty draw
    assert dp.rounds_done == 2  # both released and counted


def test_empty_draw_releases_noise_of_the_same_scale() -> None:
    z, clip, m = 1.3, 0.5, 2
    dp = CentralDP(z, clip, m, 10, 3, seed=5)
    out = CentralDPRule(create("mean"), dp, "mean")(np.zeros((0, 40_000), np.float32))
    assert float(np.std(out)) == pytest.approx(z * clip / m, rel=0.02)
    assert abs(float(np.mean(out))) < 5 * z * clip / m / np.sqrt(40_000)
    assert dp.epsilon > 0


def test_accountant_matches_opacus_rdp() -> None:
    """ε of 50 Poisson-subsampled Gaussian rounds (z = 1.1, q = 10/100, δ = 1e-5) against opacus'
    own RDPAccountant, computed here (our order grid is a superset of opacus': ours may only be
    lower), and pinned."""
    from opacus.accountants import RDPAccountant

    dp = CentralDP(1.1, 1.0, 10, 100, 50)
    for _ in range(50):
        eps = dp.step()
    ref = RDPAccountant()
    ref.history = [(1.1, 0.1, 50)]
    expected = ref.get_epsilon(1e-5)
    assert expected * 0.97 <= eps <= expected * (1 + 1e-9)
    assert eps == pytest.approx(4.899, abs=2e-3)


def test_statement_says_sampling_and_accountant() -> None:
    poisson = privacy_statement(ServerConfig.from_settings(load_settings("smoke", CENTRAL)))
    assert poisson is not None
    assert poisson["sampling"] == "poisson" and poisson["covered"] is True
    assert poisson["accountant"] == "rdp-poisson-subsampled-gaussian" and poisson["sample_rate"] == 0.2
    fixed = privacy_statement(
        ServerConfig.from_settings(load_settings("smoke", [*CENTRAL, "clients.sampling=fixed"]))
    )
    assert fixed is not None and fixed["sampling"] == "fixed" and fixed["covered"] is False
    assert "NOT covered" in describe(fixed) and "(covered)" in describe(poisson)
    assert privacy_statement(ServerConfig.from_settings(load_settings("smoke", []))) is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["clients.sampling=poisson", "aggregation.rule=krum", "data.num_clients=10"], "single client"),
        (["clients.sampling=poisson", "server.mode=fedbuff"], "server.mode='fedbuff'"),
        ([*CENTRAL, "attack.kind=sign_flip", "attack.fraction=0.2"], "malicious_minority"),
    ],
)
def test_cli_refuses_variable_cohort_combinations(
    overrides: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["simulate", "smoke", "--quiet", "--out", str(tmp_path)] + [
        a for o in overrides for a in ("--set", o)
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stamen: error:") and needle in err and "\n" not in err


@pytest.mark.slow
def test_run_with_an_empty_first_draw_releases_noise_and_writes_the_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 0, round 1, q = 0.1 over 10 clients draws nobody: the round still moves the model by
    noise of std z·C/m (m = 1) around it, counts ε, sends nothing; results.json says Poisson."""
    assert poisson_sample(0, 1, 10, 0.1) == []
    sets = [*CENTRAL, "clients.per_round=1", "rounds=1", "privacy.calibration=fixed"]
    sets += ["privacy.noise_multiplier=0.8", "privacy.clipping_norm=0.25", "eval.every=1"]
    sets += ["privacy.noise=seeded"]  # the cohort of seed 0 (public: the statement says so)
    argv = ["simulate", "smoke", "--quiet", "--out", str(tmp_path)] + [a for o in sets for a in ("--set", o)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "privacy: central, poisson sampling q=0.1, accountant rdp-poisson" in out
    assert "NOT covered: privacy.noise=seeded" in out
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["privacy"]["sampling"] == "poisson" and res["privacy"]["noise"] == "seeded"
    assert res["privacy"]["covered"] is False
    (rnd,) = res["rounds"]
    assert rnd["bytes_up"] == 0 and rnd["bytes_down"] == 0 and rnd["epsilon"] > 0

    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan
    from stamen.simulations.scenario import load_scenario

    plan = SimulationPlan.from_scenario(load_scenario("smoke", sets))
    result = run_engine("inprocess", plan)
    step = np.concatenate([(result.weights[k] - plan.initial[k]).ravel() for k in plan.initial])
    assert float(np.std(step)) == pytest.approx(0.8 * 0.25 / 1, rel=0.1)
