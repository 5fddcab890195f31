"""What the privacy guarantees need of the drivers: under central DP a row's acceptance depends only
on its own update; RQM charges every released message (several in one FedBuff buffer, rejected, after
the end); no client is sent more tasks than its mechanism was calibrated for; under central DP a
FedBuff buffer holds at most one update of each client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stamen.privacy.rqm_rdp import RqmAccountant, RqmParams, epsilon
from stamen.protocols import CodecSpec, encode_update, keys, model_hash
from stamen.server.aggregators import create
from stamen.server.checkpoint import read_checkpoint, records_equal
from stamen.server.config import ServerConfig
from stamen.server.driver.async_driver import AsyncDriver, AsyncSettings
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.downlink import FullDownlink
from stamen.server.driver.offline import collect_replies
from stamen.server.driver.types import Reply
from stamen.server.federation import RunExtras, collect_policy
from stamen.server.history import RoundRecord
from stamen.server.privacy.statement import describe, privacy_statement
from stamen.server.rqm import RqmRoundAccountant
from stamen.server.staleness import compensation, functions
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.simulations.engines import run_engine
from stamen.simulations.engines.inprocess import run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.settings_load import load_settings
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec
from tests.server.test_async_driver import BASE, FOUR, BatchTransport, ScriptedTransport

CENTRAL = ["privacy.mode=central", "aggregation.rule=mean", "data.num_clients=20", "clients.per_round=4"]
PARAMS = RqmParams(1.0, 4.0, 4, 0.3)


def _driver(
    transport: ScriptedTransport,
    versions: int,
    *,
    mode: str = "fedbuff",
    k: int = 2,
    conc: int = 2,
    accountant: RqmRoundAccountant | None = None,
    **extra: object,
) -> AsyncDriver:
    settings = AsyncSettings(mode, versions, conc, k, 0.5, 1.0, 0.0, 0, 1.0, 100, **extra)
    stale = StaleHandling(functions.create("polynomial", a=1.0), compensation.create("direct"))

    def instructions(rnd: int, version: int) -> RoundInstructions:
        return RoundInstructions(rnd, version, 0, "dense", False, TaskSpec(), TrainSpec())

    parts = (FullDownlink(), CollectPolicy(norm_ratio=0), create("mean"), stale, ModelHistory(8))
    return AsyncDriver(settings, transport, instructions, *parts, accountant=accountant)


def _rqm() -> RqmRoundAccountant:
    return RqmRoundAccountant(RqmAccountant(PARAMS, coordinates=3), 1e-5)


def _accepted(norms: dict[str, float], policy: CollectPolicy) -> set[str]:
    """The clients whose updates (``norms[client]`` on a random direction each) a round accepts."""
    base, rng, replies = {"w": np.zeros(16, np.float32)}, np.random.default_rng(0), []
    for client, norm in norms.items():
        v = rng.standard_normal(16)
        delta = {"w": (v / np.linalg.norm(v) * norm).astype(np.float32)}
        data = encode_update(
            delta, CodecSpec.parse("dense"), base_hash=model_hash(base), version=1, sender=client, rng=rng
        )
        replies.append(Reply(client, envelope=data, metrics={keys.NUM_EXAMPLES: 1}, nbytes=len(data)))
    return set(collect_replies(base, replies, policy).senders)


def _policy(*overrides: str) -> CollectPolicy:
    cfg = ServerConfig.from_settings(load_settings("smoke", list(overrides)))
    return collect_policy(cfg, create("mean"), RunExtras())


def test_central_dp_accepts_a_row_on_its_own_update_only() -> None:
    """Four updates of norm 0.01 and three of norm 1 (= C): the adaptive filter (25 x the median)
    rejects the three; one more client of norm 1 moves the median and flips them all — a change of
    3 C/m in a release whose declared sensitivity is C/m. Under central DP the run's policy has no
    such filter: each client's acceptance is the same whoever else took part."""
    cohort = {f"c-{i}": 0.01 if i < 4 else 1.0 for i in range(7)}
    more = {**cohort, "c-7": 1.0}
    dp = _policy(*CENTRAL)
    for client, norm in cohort.items():  # alone, with the cohort, with one more client: one verdict
        verdicts = {client in _accepted(rows, dp) for rows in ({client: norm}, cohort, more)}
        assert verdicts == {True}, client
    plain = _policy()  # without central DP the adaptive filter stays
    assert _accepted(cohort, plain) == {"c-0", "c-1", "c-2", "c-3"} and _accepted(more, plain) == set(more)


def test_rqm_charges_a_client_twice_for_two_updates_in_one_buffer() -> None:
    """Buffer 3, two clients: c-1 replies, is sent a new task (the only idle client), replies again,
    is sent a third, then c-2 replies: one buffer holds c-1 twice, and c-1 released two RQM messages
    read by the server, plus the third task still in flight at the end (charged: it may have been
    released, unread)."""
    accountant = _rqm()
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-1", "c-2"])
    result = _driver(transport, 1, k=3, accountant=accountant).run(BASE)
    assert result.extra["after_end"]["in_flight"] == 1
    assert accountant.participations == {"c-1": 3, "c-2": 1}
    three = epsilon(PARAMS, coordinates=3, rounds=3, target_delta=1e-5)
    assert result.rounds[0].epsilon == pytest.approx(three, rel=1e-9)


def test_rqm_charges_rejected_replies_and_those_after_the_end() -> None:
    """One pull returns four replies: c-3's names a version the server never sent (rejected), c-1 and
    c-2 fill the buffer (version 1, the last), c-4 arrives after the end. All four were released."""
    accountant = _rqm()
    transport = BatchTransport(FOUR, ["c-3", "c-1", "c-2", "c-4"], {"c-3": 7})
    result = _driver(transport, 1, conc=4, accountant=accountant).run(BASE)
    assert result.rounds[0].rejected == 1 and result.extra["after_end"]["replies"] == 1
    assert accountant.participations == {"c-1": 1, "c-2": 1, "c-3": 1, "c-4": 1}
    assert result.rounds[-1].epsilon == pytest.approx(accountant([]), rel=1e-12)


def test_no_client_is_sent_more_tasks_than_calibrated_for() -> None:
    """Cap 2, two clients, FedAsync (one version per reply) asked for 9 versions: four tasks in all,
    so four versions; then nobody has budget left and the run stops like the synchronous one."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"] * 6)
    driver = _driver(transport, 9, mode="fedasync", k=1, conc=1, max_trips=2)
    result = driver.run(BASE)
    assert [r.round for r in result.rounds] == [1, 2, 3, 4]
    assert result.stopped == "privacy budget exhausted"
    assert dict(driver.budget.trips) == {"c-1": 2, "c-2": 2}


def test_central_dp_buffer_holds_one_update_per_client() -> None:
    """Buffer 2: c-1 replies, is sent a new task and replies again before c-2. Under central DP the
    second is rejected (one clipped row per client per release), so version 1 = mean(+1, +2) = 1.5."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-1", "c-2"])
    result = _driver(transport, 1, one_row_per_client=True).run(BASE)
    np.testing.assert_allclose(result.weights["w"], 1.5, rtol=1e-6)
    assert result.rounds[0].rejected == 1


def test_central_dp_buffer_larger_than_the_federation_names_the_key() -> None:
    """It was refused as "clients_per_round must be in [1, 4], got 10", naming no setting."""
    sc = load_scenario("smoke", ["server.mode=fedbuff", "privacy.mode=central", "aggregation.rule=mean"])
    with pytest.raises(ValueError, match=r"server.buffer_size=10 exceeds data.num_clients=4"):
        SimulationPlan.from_scenario(sc)


def test_statement_says_why_fedbuff_is_not_covered_and_the_client_cap() -> None:
    fedbuff = privacy_statement(
        ServerConfig.from_settings(load_settings("smoke", [*CENTRAL, "server.mode=fedbuff"]))
    )
    assert fedbuff is not None and fedbuff["covered"] is False
    assert "first updates to arrive" in describe(fedbuff) and "every later buffer" in fedbuff["note"]
    local = ["privacy.mode=local", "server.mode=fedbuff", "rounds=3"]
    statement = privacy_statement(ServerConfig.from_settings(load_settings("smoke", local)))
    assert statement is not None and statement["max_releases_per_client"] == 3
    sync = privacy_statement(
        ServerConfig.from_settings(load_settings("smoke", ["privacy.mode=local", "rounds=3"]))
    )
    assert sync is not None and sync["max_releases_per_client"] == 3  # a deployment's re-run round is capped
    fixed = ["privacy.mode=local", "privacy.calibration=fixed", "privacy.noise_multiplier=1.0"]
    statement = privacy_statement(ServerConfig.from_settings(load_settings("smoke", fixed)))
    assert statement is not None and "max_releases_per_client" not in statement  # no target, no cap


@pytest.mark.slow
def test_fedbuff_local_dp_stays_within_the_target() -> None:
    """4 clients, buffer 4, concurrency 3, 3 versions, local DP calibrated to ε = 4 for 3 releases:
    without the cap a fast client released a 4th update (reported ε 4.71); with it no client is sent
    more than 3 tasks and the worst reported ε is the calibrated 3.998."""
    overrides = ["rounds=3", "privacy.mode=local", "server.mode=fedbuff", "server.buffer_size=4"]
    plan = SimulationPlan.from_scenario(
        load_scenario("smoke", [*overrides, "server.concurrency=3", "privacy.target_epsilon=4"])
    )
    result = run_engine("inprocess", plan)
    eps = [r.epsilon for r in result.rounds]
    assert all(e is not None and e <= 4.0 for e in eps), eps
    assert max(e for e in eps if e is not None) == pytest.approx(3.998, abs=2e-3)


@pytest.mark.slow
def test_the_task_counts_survive_a_resume(tmp_path: Path) -> None:
    """The same local-DP FedBuff run, stopped after version 1 and resumed from its state-dir, sends
    the same tasks as the uninterrupted one: the per-client counts the cap needs are checkpointed
    (seeded noise: the two runs are compared value for value)."""
    overrides = ["rounds=3", "privacy.mode=local", "server.mode=fedbuff", "server.buffer_size=4"]
    overrides.append("privacy.noise=seeded")

    def plan(state_dir: Path | None = None) -> SimulationPlan:
        more = ["server.concurrency=3", "privacy.target_epsilon=4"]
        p = SimulationPlan.from_scenario(load_scenario("smoke", [*overrides, *more]))
        p.state_dir = state_dir
        return p

    def stop_after_1(rec: RoundRecord) -> None:
        if rec.round == 1:
            raise KeyboardInterrupt

    ref = run_inprocess(plan())
    run_inprocess(plan(tmp_path), stop_after_1)
    ck = read_checkpoint(tmp_path)
    assert ck is not None and sum(ck.state["driver"]["trips"].values()) >= 3
    resumed = run_inprocess(plan(tmp_path))
    assert records_equal(resumed.rounds, ref.rounds) and resumed.stopped == ref.stopped
    assert all(r.epsilon is not None and r.epsilon <= 4.0 for r in resumed.rounds)
