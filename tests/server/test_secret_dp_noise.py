"""Central DP's noise and its Poisson cohorts are secret by default (``privacy.noise = "secret"``):
nobody who knows the run seed (every client: it is in the instructions) can rebuild them. With
``"seeded"`` they are the run seed's, reproducible, and the privacy statement says the guarantee
does not hold (reviewer's scripts c1, c10)."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from stamen.server.federation import assemble
from stamen.server.privacy.central import CentralDP, CentralDPRule
from stamen.server.privacy.statement import describe, privacy_statement
from stamen.server.rules import build_rule
from stamen.server.sampling import draw_cohort
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

CENTRAL = ["rounds=3", "privacy.mode=central", "aggregation.rule=mean"]
ROUNDS = 30  # cohorts compared over this many rounds


def _plan(*extra: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("smoke", [*CENTRAL, *extra]))


def _release(plan: SimulationPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(released aggregate, true fixed-denominator sum, the noise a client rebuilds from the seed)
    of round 1 of a freshly built rule, as the reviewer's c1 script does."""
    rule = cast(CentralDPRule, build_rule(plan.cfg.settings))
    dp = rule.dp
    updates = np.random.default_rng(7).standard_normal((3, 1000)).astype(np.float32) * 0.01  # norms < C
    truth = updates.sum(0) / dp.clients_per_round
    out = rule(updates.copy(), None)
    seed = plan.cfg.instructions(1, 0).seed  # what every client of round 1 receives
    g = np.random.default_rng(np.random.SeedSequence([seed, CentralDP.TAG, 1]))
    noise = g.standard_normal(1000, dtype=np.float32) * np.float32(dp.noise_multiplier * rule.sens)
    return out, truth, noise


def test_central_noise_is_not_the_seeds_by_default() -> None:
    plan = _plan()
    assert plan.cfg.privacy.noise == "secret"
    (out, truth, rebuilt), (again, _, _) = _release(plan), _release(plan)
    std = float(np.std(out - truth))
    assert std > 0.01  # noise of the calibrated scale was added
    assert float(np.abs(out - again).max()) > std  # two releases of the same run differ
    assert float(np.std(out - rebuilt - truth)) > std  # subtracting the seed's noise does not help


def test_seeded_central_noise_is_the_seeds_and_replays() -> None:
    plan = _plan("privacy.noise=seeded")
    (out, truth, rebuilt), (again, _, _) = _release(plan), _release(plan)
    np.testing.assert_array_equal(out, again)
    assert float(np.abs(out - rebuilt - truth).max()) < 1e-6  # what any client could do


class _Roster:
    """A transport reduced to its roster: ``configure`` only samples and builds tasks."""

    def __init__(self, n: int) -> None:
        self.ids = [f"client-{i}" for i in range(n)]

    def clients(self) -> list[str]:
        return self.ids


def _cohorts(plan: SimulationPlan) -> list[list[str]]:
    driver = assemble(plan.cfg, _Roster(plan.cfg.num_clients), plan.initial)  # type: ignore[arg-type]
    return [[t.client for t in driver.configure(r, plan.initial)] for r in range(1, ROUNDS + 1)]


def _public(plan: SimulationPlan) -> list[list[str]]:
    """The cohorts anyone who knows the run seed computes (reviewer's c10)."""
    cfg, ids = plan.cfg, [f"client-{i}" for i in range(plan.cfg.num_clients)]
    return [
        draw_cohort(cfg.sampling, cfg.seed, r, ids, cfg.per_round, cfg.sample_rate)
        for r in range(1, ROUNDS + 1)
    ]


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_central_cohorts_are_secret_by_default(sampling: str) -> None:
    plan = _plan("data.num_clients=20", "clients.per_round=5", f"clients.sampling={sampling}")
    assert plan.cfg.sampling == sampling and plan.cfg.secret_cohorts
    first, second = _cohorts(plan), _cohorts(plan)
    assert first != _public(plan) and first != second
    with pytest.raises(ValueError, match=r"privacy\.noise=seeded"):
        plan.cohort(1)


def test_seeded_cohorts_are_the_public_ones_and_other_modes_keep_theirs() -> None:
    plan = _plan("data.num_clients=20", "clients.per_round=5", "privacy.noise=seeded")
    assert _cohorts(plan) == _public(plan) == _cohorts(plan)
    assert [[f"client-{i}" for i in plan.cohort(r)] for r in range(1, ROUNDS + 1)] == _public(plan)
    local = SimulationPlan.from_scenario(load_scenario("smoke", ["privacy.mode=local"]))
    assert not local.cfg.secret_cohorts and _cohorts(local) == _public(local)  # no amplification claimed


@pytest.mark.parametrize(
    "mode", [CENTRAL[1:], ["privacy.mode=local"], ["privacy.mode=rqm", "codec.pipeline=rqm"]]
)
def test_statement_warns_about_seeded_noise(mode: list[str]) -> None:
    secret = privacy_statement(SimulationPlan.from_scenario(load_scenario("smoke", mode)).cfg)
    seeded = privacy_statement(
        SimulationPlan.from_scenario(load_scenario("smoke", [*mode, "privacy.noise=seeded"])).cfg
    )
    assert secret is not None and seeded is not None
    assert secret["noise"] == "secret" and secret["covered"] is True and "seed" not in secret["note"]
    assert seeded["noise"] == "seeded" and seeded["covered"] is False
    assert "derived from the public run seed" in seeded["note"] and "does not hold" in seeded["note"]
    assert "NOT covered: privacy.noise=seeded" in describe(seeded)
