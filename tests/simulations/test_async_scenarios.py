"""The built-in async scenarios: the quick variants run, record simulated time and staleness, and the
full ones keep the settings their descriptions promise."""

from __future__ import annotations

import itertools
import math

import pytest

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


def _run(name: str, *overrides: str):  # type: ignore[no-untyped-def]
    return run_engine("inprocess", SimulationPlan.from_scenario(load_scenario(name, list(overrides))))


def test_full_scenarios_keep_their_settings() -> None:
    speeds = load_scenario("async-speeds")
    assert (speeds.server.mode, speeds.data.num_clients, speeds.timing.compute_sigma) == ("fedbuff", 100, 1.0)
    assert load_scenario("async-speeds", ["data.dataset=digits"]).data.dataset == "digits"
    stale = load_scenario("async-stale")
    assert (stale.server.mode, stale.model.name, stale.timing.delay_mode) == ("sync", "cnn", "class")
    assert (stale.timing.delayed_class, stale.timing.delay_rounds) == (5, 10)


@pytest.mark.slow
def test_async_speeds_quick_aggregates_as_updates_arrive() -> None:
    res = _run("async-speeds-quick")
    rounds = res.rounds
    assert len(rounds) == 12 and all(r.rejected == 0 for r in rounds)
    times = [r.sim_time_s for r in rounds]
    assert all(b > a for a, b in itertools.pairwise(times))  # versions advance in sim time
    assert max(r.staleness_max for r in rounds) >= 2  # fast clients overtake slow ones
    hist = res.extra["staleness_histogram"]
    assert [sum(h.values()) for h in hist] == [3] * 12  # buffer_size updates per version
    assert rounds[-1].accuracy == pytest.approx(0.7389, abs=0.03)  # pinned (seed 0)


@pytest.mark.slow
def test_async_stale_quick_delays_the_class_clients_and_still_learns() -> None:
    full = SimulationPlan.from_scenario(load_scenario("async-stale"))
    assert len(full.timing().delayed_clients) == 6  # the full scenario's "6 of 20"
    direct = _run("async-stale-quick")
    rounds = direct.rounds
    assert [r.staleness_max for r in rounds] == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]  # tau grows to delay_rounds
    assert all(math.isfinite(r.sim_time_s) for r in rounds)
    weighted = _run("async-stale-quick", "server.compensation=weighted")
    assert weighted.rounds[-1].accuracy != direct.rounds[-1].accuracy  # the policy is applied
    assert rounds[-1].accuracy > 0.3  # 10 classes: chance is 0.1
