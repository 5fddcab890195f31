"""Every privacy mode runs through the engines and reports ε each round, within the target."""

from __future__ import annotations

import pytest

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

MODES = {
    "central": ["privacy.mode=central", "aggregation.rule=mean"],
    "local": ["privacy.mode=local"],
    "dp_sgd": ["privacy.mode=dp_sgd"],
    "rqm": ["privacy.mode=rqm", "codec.pipeline=rqm"],
}


def _cfg(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("smoke", ["rounds=3", *overrides]))


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=pytest.mark.slow) if m in ("dp_sgd", "rqm") else m for m in sorted(MODES)]
)
def test_epsilon_reported_every_round_and_within_target(mode: str) -> None:
    res = run_engine("inprocess", _cfg(*MODES[mode], "privacy.target_epsilon=4"))
    eps = [r.epsilon for r in res.rounds]
    assert all(e is not None and e > 0 for e in eps), eps
    assert eps == sorted(eps)  # cumulative
    assert eps[-1] <= 4.0 * 1.01


def test_no_privacy_reports_no_epsilon_and_bad_combinations_fail() -> None:
    assert all(r.epsilon is None for r in run_engine("inprocess", _cfg()).rounds)
    with pytest.raises(ValueError, match="declares no L2 sensitivity"):
        _cfg("privacy.mode=central")  # fedavg's data-size weights have no sensitivity bound
    with pytest.raises(ValueError, match="start with 'rqm'"):
        _cfg("privacy.mode=rqm", "codec.pipeline=topk,rqm")


@pytest.mark.slow
def test_flower_engine_reports_the_same_epsilon() -> None:
    for mode in ("central", "local"):
        # central: Poisson at q = 0.5, the same draws (and noise) from the seed
        cfg = _cfg(*MODES[mode], "clients.per_round=2", "privacy.noise=seeded")
        fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
        assert [r.epsilon for r in real.rounds] == pytest.approx([r.epsilon for r in fast.rounds])
        assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
