"""FRL's faithful rank reversal in the engines: the attackers pool the rankings of
``min(#attackers, pool_size)`` malicious partitions (drawn from *all* attackers, trained from the
round's global model), and the cohort sampler keeps the malicious a minority (FRL's sampler)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.core import encode_delta, local_update
from stamen.protocols import model_hash
from stamen.server.aggregators import create
from stamen.server.aggregators.frl import score_segments
from stamen.server.config import ServerConfig
from stamen.server.rounds import RoundAggregator, ValidationPolicy
from stamen.simulations.adversary import attack_factory, pool_members
from stamen.simulations.attacks.rank_reversal import reversed_combined_ranking
from stamen.simulations.engines import run_engine
from stamen.simulations.provider import client_data
from stamen.simulations.scenario import load_scenario
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.weights import get_weights

SMALL = (
    "data.num_clients=10",
    "clients.per_round=5",
    "model.hidden=16",
    "clients.local_epochs=1",
    "attack.kind=rank_reversal",
    "attack.fraction=0.2",
)
SCORES = "net.0.scores"  # first score tensor of the supermask MLP


def _cfg(*overrides: str) -> ServerConfig:
    return ServerConfig.from_scenario(load_scenario("frl", list(overrides)))


class _Recorder:
    """The ``frl`` rule, keeping the last stack it voted on."""

    def __init__(self) -> None:
        self.rule, self.stack = create("frl"), np.empty(0)

    def bind_round(self, table: object, base_flat: np.ndarray) -> None:
        self.rule.bind_round(table, base_flat)  # type: ignore[attr-defined]

    def __call__(self, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
        self.stack = stack.copy()
        return np.asarray(self.rule(stack, weights))


def _ranking_of(cfg: ServerConfig, weights: dict[str, np.ndarray], rnd: int, pid: int) -> np.ndarray:
    """What partition ``pid`` would send in round ``rnd``: its scores ranking (first score tensor)."""
    delta = local_update(
        build_model(cfg.task),
        weights,
        client_data(cfg.task, pid),
        cfg.train_for_round(rnd),
        client_seed(cfg.seed, rnd, pid),
    ).delta
    return np.asarray(delta[SCORES]).reshape(-1)


def test_forged_rows_reverse_the_pool_of_all_attackers_not_only_this_rounds() -> None:
    cfg = _cfg("rounds=1", *SMALL)
    assert len(cfg.malicious) == 2
    rnd = next(r for r in range(1, 50) if len(set(cfg.cohort(r)) & set(cfg.malicious)) == 1)
    pids = cfg.cohort(rnd)
    weights = get_weights(build_model(cfg.task))
    rec, h = _Recorder(), model_hash(weights)
    hook = attack_factory(cfg)(rnd)  # type: ignore[misc]
    ra = RoundAggregator(weights, h, len(pids), rec, ValidationPolicy(), hook)
    model = build_model(cfg.task)
    for pid in pids:
        res = local_update(
            model,
            weights,
            client_data(cfg.task, pid),
            cfg.train_for_round(rnd),
            client_seed(cfg.seed, rnd, pid),
        )
        data = encode_delta(res.delta, "frl_rank", base_hash=h, version=rnd, sender=f"client-{pid}", seed=1)
        assert ra.add_envelope(f"client-{pid}", data, res.num_examples)
    assert ra.finish(1.0) is not None
    name, start, stop = score_segments(ra.table)[0]
    assert name == SCORES
    seg = slice(start, stop)
    bad_row = rec.stack[pids.index(next(p for p in pids if p in cfg.malicious)), seg]
    pooled = np.stack([_ranking_of(cfg, weights, rnd, p) for p in cfg.malicious])
    np.testing.assert_array_equal(bad_row, reversed_combined_ranking(pooled))
    sampled_only = pooled[[cfg.malicious.index(p) for p in pids if p in cfg.malicious]]
    assert not np.array_equal(bad_row, reversed_combined_ranking(sampled_only))  # the old approximation


def test_pool_trains_the_drawn_partitions_from_the_rounds_base() -> None:
    cfg = _cfg("rounds=1", *SMALL, "attack.pool_size=1")
    weights = get_weights(build_model(cfg.task))
    hook = attack_factory(cfg)(3)  # type: ignore[misc]
    assert hook.pool is not None
    (delta,) = hook.pool(weights)
    (pid,) = pool_members(cfg.malicious, 1, cfg.seed, 3)
    np.testing.assert_array_equal(delta[SCORES].reshape(-1), _ranking_of(cfg, weights, 3, pid))


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
        _cfg(
            "data.num_clients=10", "clients.per_round=10", "attack.kind=rank_reversal", "attack.fraction=0.5"
        )
    cfg = _cfg(
        "data.num_clients=10",
        "clients.per_round=10",
        "attack.kind=rank_reversal",
        "attack.fraction=0.5",
        "attack.malicious_minority=false",
    )
    assert cfg.cohort(1) == list(range(10))


@pytest.mark.slow
def test_frl_rank_reversal_flower_matches_inprocess() -> None:
    cfg = _cfg(
        "rounds=2",
        "data.num_clients=6",
        "clients.per_round=3",
        "attack.kind=rank_reversal",
        "attack.fraction=0.34",
    )
    fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01
