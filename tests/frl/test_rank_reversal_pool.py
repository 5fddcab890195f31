"""FRL's faithful rank reversal in the engines: the attackers pool the rankings of
``min(#attackers, pool_size)`` malicious partitions (drawn from *all* attackers, trained from the
round's global model), and the cohort sampler keeps the malicious a minority (FRL's sampler)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.core import local_update
from stamen.server.aggregators.frl import score_segments
from stamen.simulations.adversary import Adversary, pool_members
from stamen.simulations.attacks.rank_reversal import reversed_combined_ranking
from stamen.simulations.engines import run_engine
from stamen.simulations.engines.inprocess import InProcessTransport
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import client_data
from stamen.simulations.scenario import load_scenario
from stamen.task.models import build_model, model_structure
from stamen.task.seeds import client_seed

SMALL = (
    "data.num_clients=10",
    "clients.per_round=5",
    "model.hidden=16",
    "clients.local_epochs=1",
    "attack.kind=rank_reversal",
    "attack.fraction=0.2",
)
SCORES = "net.0.scores"  # first score tensor of the supermask MLP


def _plan(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("frl", list(overrides)))


def _ranking_of(plan: SimulationPlan, weights: dict[str, np.ndarray], rnd: int, pid: int) -> np.ndarray:
    """What partition ``pid`` would send in round ``rnd``: its scores ranking (first score tensor)."""
    cfg = plan.cfg
    delta = local_update(
        build_model(cfg.task),
        weights,
        client_data(plan.data, pid),
        cfg.train_for_round(rnd),
        client_seed(cfg.seed, rnd, pid),
    ).delta
    return np.asarray(delta[SCORES]).reshape(-1)


def test_forged_rows_reverse_the_pool_of_all_attackers_not_only_this_rounds() -> None:
    plan = _plan("rounds=1", *SMALL)
    assert len(plan.malicious) == 2
    rnd = next(r for r in range(1, 50) if len(set(plan.cohort(r)) & set(plan.malicious)) == 1)
    pids = plan.cohort(rnd)
    transport = InProcessTransport(plan.nodes(None), plan.cfg.num_clients, model_structure(plan.cfg.task))
    driver = plan.driver(transport, None)
    driver.round(rnd, plan.initial)
    done = driver.last
    assert done is not None and done.senders == [f"client-{p}" for p in pids]
    name, start, stop = score_segments(done.table)[0]
    assert name == SCORES
    bad_row = done.stack[pids.index(next(p for p in pids if p in plan.malicious)), start:stop]
    pooled = np.stack([_ranking_of(plan, plan.initial, rnd, p) for p in plan.malicious])
    np.testing.assert_array_equal(bad_row, reversed_combined_ranking(pooled))
    sampled_only = pooled[[plan.malicious.index(p) for p in pids if p in plan.malicious]]
    assert not np.array_equal(bad_row, reversed_combined_ranking(sampled_only))  # the old approximation


def test_pool_trains_the_drawn_partitions_from_the_rounds_base() -> None:
    plan = _plan("rounds=1", *SMALL, "attack.pool_size=1")
    hooks = plan.extras(None).hooks
    adversary = getattr(hooks, "adversary", None)
    assert isinstance(adversary, Adversary) and adversary.pool is not None
    (pid,) = pool_members(plan.malicious, 1, plan.cfg.seed, 3)
    (delta,) = adversary.pool([pid], 3, plan.initial)
    np.testing.assert_array_equal(delta[SCORES].reshape(-1), _ranking_of(plan, plan.initial, 3, pid))


def test_pool_members_by_hand_and_errors() -> None:
    assert sorted(pool_members([4, 7, 9], 25, 0, 1)) == [4, 7, 9]  # min(m, 25) = all of them
    assert pool_members([4, 7, 9], 2, 0, 1) == pool_members([4, 7, 9], 2, 0, 1)
    draws = {tuple(pool_members([4, 7, 9], 1, 0, r)) for r in range(1, 40)}
    assert draws == {(4,), (7,), (9,)}  # drawn per round from all attackers
    with pytest.raises(ValueError, match="pool_size"):
        pool_members([1], 0, 0, 1)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 999), min_size=1, max_size=40, unique=True),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
    st.integers(1, 500),
)
def test_pool_members_are_distinct_attackers(bad: list[int], size: int, seed: int, rnd: int) -> None:
    got = pool_members(bad, size, seed, rnd)
    assert len(got) == min(len(bad), size) and len(set(got)) == len(got) and set(got) <= set(bad)


def test_cohorts_keep_the_malicious_a_minority() -> None:
    from stamen.server.sampling import sample_clients

    bad = list(range(40))  # 40 % of 100; a cohort of 25 has >= 13 of them with probability ~ 0.1
    redrawn = 0
    for rnd in range(1, 200):
        cohort = sample_clients(0, rnd, 100, 25, bad)
        assert 2 * len(set(cohort) & set(bad)) < 25 and len(set(cohort)) == 25
        plain = sample_clients(0, rnd, 100, 25)
        if 2 * len(set(plain) & set(bad)) < 25:
            assert cohort == plain  # a first draw that qualifies is kept
        else:
            redrawn += 1
    assert redrawn > 0
    assert sample_clients(0, 1, 4, 2, [0, 1]) == [2, 3]  # the only cohort without a malicious majority


def test_infeasible_minority_is_a_clear_error() -> None:
    from stamen.server.sampling import sample_clients

    with pytest.raises(ValueError, match="malicious"):
        sample_clients(0, 1, 10, 10, [0, 1, 2, 3, 4])  # full participation, 5 of 10 malicious
    with pytest.raises(ValueError, match="malicious_minority"):
        _plan(
            "data.num_clients=10", "clients.per_round=10", "attack.kind=rank_reversal", "attack.fraction=0.5"
        )
    plan = _plan(
        "data.num_clients=10",
        "clients.per_round=10",
        "attack.kind=rank_reversal",
        "attack.fraction=0.5",
        "attack.malicious_minority=false",
    )
    assert plan.cohort(1) == list(range(10))


@pytest.mark.slow
def test_frl_rank_reversal_flower_matches_inprocess() -> None:
    plan = _plan(
        "rounds=2",
        "data.num_clients=6",
        "clients.per_round=3",
        "attack.kind=rank_reversal",
        "attack.fraction=0.34",
    )
    fast, real = run_engine("inprocess", plan), run_engine("flower", plan)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01
