"""A late reply of a task the asynchronous server gave up at the timeout is told from the fresh task
its client was sent since (same client, same model version: FedBuff's version does not move between
the two dispatches): the reply names the dispatch it answers (Flower's ``reply_to_message_id``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import MESSAGE_UNAVAILABLE_ERROR_REASON
from flwr.supercore.task_identity import TaskIdentity

from stamen.protocols import CodecSpec, encode_update, keys
from stamen.protocols.flower import envelope_record
from stamen.server.aggregators import create
from stamen.server.checkpoint_run import RunState
from stamen.server.driver.async_driver import AsyncDriver, AsyncSettings
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.downlink import FullDownlink
from stamen.server.driver.flower_async import GridAsyncTransport
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.staleness import compensation, functions
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.simulations.engines import inprocess, run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

BASE = {"w": np.zeros(3, np.float32)}
NODE, SUPERLINK = 7, 1  # the one SuperNode; the id the SuperLink writes its own messages from


@pytest.fixture(autouse=True)
def _run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)  # a Message needs its run and node, as in a ServerApp
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


class ScriptedGrid:
    """Flower's grid with one node: pull ``k`` answers the messages ``script[k]`` names (by push
    order), those still asked for: ``"update"`` is the node's reply to message ``i``, the update
    ``+(i + 1)`` trained from the version that message carried; ``"expired"`` the SuperLink's own
    error for a message whose TTL ran out. Pulls past the script find nothing."""

    def __init__(self, script: list[list[tuple[int, str]]]) -> None:
        self.script, self.pushed = list(script), 0
        self.transport: GridAsyncTransport | None = None

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            ids.append(f"m{self.pushed}")
            msg.metadata.__dict__["_message_id"] = ids[-1]
            self.pushed += 1
        return ids

    def pull_messages(self, ids: list[str]) -> list[Any]:
        step = self.script.pop(0) if self.script else []
        return [self._answer(i, kind) for i, kind in step if f"m{i}" in ids]

    def _answer(self, i: int, kind: str) -> Any:
        if kind == "expired":
            meta = SimpleNamespace(src_node_id=SUPERLINK, reply_to_message_id=f"m{i}")
            error = SimpleNamespace(reason=MESSAGE_UNAVAILABLE_ERROR_REASON)
            return SimpleNamespace(metadata=meta, has_error=lambda: True, error=error)
        assert self.transport is not None
        task = self.transport.pending[f"m{i}"]
        data = encode_update(
            {"w": np.full(3, i + 1.0, np.float32)},
            CodecSpec.parse("dense"),
            base_hash=task.expected_base,
            version=task.instructions.version,
            sender=task.client,
            rng=np.random.default_rng(0),
        )
        content = RecordDict(
            {keys.UPDATE: envelope_record(data), keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})}
        )
        meta = SimpleNamespace(src_node_id=NODE, reply_to_message_id=f"m{i}")
        return SimpleNamespace(metadata=meta, has_error=lambda: False, content=content)


class OneNode:
    """The grid transport's node bookkeeping for the single node ``node-7``."""

    def __init__(self, grid: ScriptedGrid) -> None:
        self.grid = grid

    def clients(self) -> list[str]:
        return [f"node-{NODE}"]

    def node_of(self, client: str) -> int:
        assert client == f"node-{NODE}"
        return NODE

    def bind(self, node: int, reply: Reply, content: RecordDict) -> Reply:
        return reply


def _fedbuff(grid: ScriptedGrid) -> AsyncDriver:
    """FedBuff, buffer 2, one client in flight, mean rule, reply timeout 0 s (one poll per pull)."""
    settings = AsyncSettings("fedbuff", 1, 1, 2, 0.5, 1.0, 0.0, 0, 0.0, 100)
    stale = StaleHandling(functions.create("polynomial", a=1.0), compensation.create("direct"))
    transport = GridAsyncTransport(OneNode(grid), ttl_s=0.0)  # type: ignore[arg-type]
    grid.transport = transport

    def instructions(rnd: int, version: int) -> RoundInstructions:
        return RoundInstructions(rnd, version, 0, "dense", False, TaskSpec(), TrainSpec())

    policy = CollectPolicy(norm_ratio=0)
    return AsyncDriver(
        settings, transport, instructions, FullDownlink(), policy, create("mean"), stale, ModelHistory(8)
    )


@pytest.mark.parametrize("late", ["update", "expired"])
def test_a_late_reply_is_not_taken_for_the_fresh_task_of_its_client(late: str) -> None:
    """m0 gets no reply within the timeout: given up (rejected), and node-7 is sent m1 from the same
    version 0. Then m0's late answer (its update +1, or the SuperLink's "expired" error) arrives:
    dropped and counted in ``late_replies``; m1 stays in flight. m1 (+2) and then m2 (+3) fill the
    buffer: version 1 = mean(2, 3) = 2.5 after 3 dispatches. The old match by client took m0's +1 for
    m1 (version 1 = mean(1, 2) = 1.5), or, on the error, gave m1 up and sent node-7 a 4th task while
    it still trained m1."""
    grid = ScriptedGrid([[], [(0, late)], [(1, "update")], [(2, "update")]])
    result = _fedbuff(grid).run(BASE)
    assert [r.round for r in result.rounds] == [1] and result.stopped is None
    np.testing.assert_allclose(result.weights["w"], 2.5, rtol=1e-6)
    assert grid.pushed == 3 and result.rounds[0].rejected == 1  # m0, given up at the timeout
    assert result.extra["late_replies"] == 1 and result.extra["after_end"]["in_flight"] == 0


def test_the_transport_names_the_task_each_reply_answers() -> None:
    """Two messages to one node from one version: each reply names its own task, the SuperLink's
    error for an expired message included (read as that task's error, not as another node's)."""
    grid = ScriptedGrid([[(1, "update"), (0, "expired")]])
    transport = GridAsyncTransport(OneNode(grid), ttl_s=0.0)  # type: ignore[arg-type]
    grid.transport = transport
    instr = RoundInstructions(1, 0, 0, "dense", False, TaskSpec(), TrainSpec())
    tasks = [TrainTask(f"node-{NODE}", instr, BASE, None, "ab" * 32) for _ in range(2)]
    for task in tasks:
        transport.push(task)
    fresh, expired = transport.pull(0.0)
    assert fresh.task is tasks[1] and fresh.error is None and fresh.envelope is not None
    assert expired.task is tasks[0] and expired.error == MESSAGE_UNAVAILABLE_ERROR_REASON
    assert not transport.pending


def test_the_virtual_clock_never_gives_up_a_task_in_flight() -> None:
    """In-process, a reply timeout shorter than every trip: each dispatch has exactly one arrival on
    the virtual clock (its reply, or a lost trip's timeout error), matched to that dispatch, and a
    pull is empty only with nothing in flight, so no task is given up early and no reply is late."""
    args = ["rounds=3", "server.mode=fedbuff", "server.buffer_size=2", "server.concurrency=3"]
    plan = SimulationPlan.from_scenario(load_scenario("smoke", args), timeout_s=1e-3)
    sent: dict[int, float] = {}
    got: list[tuple[Reply, float]] = []
    push, pull = inprocess.VirtualClockTransport.push, inprocess.VirtualClockTransport.pull

    def pushed(self: inprocess.VirtualClockTransport, task: TrainTask) -> None:
        sent[id(task)] = self.events.now
        push(self, task)

    def pulled(self: inprocess.VirtualClockTransport, timeout: float) -> list[Reply]:
        replies = pull(self, timeout)
        got.extend((r, self.events.now) for r in replies)
        return replies

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inprocess.VirtualClockTransport, "push", pushed)
        mp.setattr(inprocess.VirtualClockTransport, "pull", pulled)
        result = run_engine("inprocess", plan)
    assert [r.round for r in result.rounds] == [1, 2, 3] and result.extra["late_replies"] == 0
    assert all(r.rejected == 0 for r in result.rounds)
    assert all(r.task is not None and r.task.client == r.client for r, _ in got)
    assert len({id(r.task) for r, _ in got}) == len(got) <= len(sent)  # one arrival per dispatch
    assert all(at - sent[id(r.task)] > 1e-3 for r, at in got)  # every trip outlasted the timeout


def test_the_late_reply_count_survives_a_resume(tmp_path: Path) -> None:
    """A deployment's run (state-dir) counts m0's late reply, is stopped at the checkpoint written
    right after it, and is resumed by a restarted server (a fresh grid: it dispatches afresh, m0 and
    m1 answered +1 and +2): results.json still counts the late reply (the count was not
    checkpointed: the resumed run said 0)."""
    grid = ScriptedGrid([[], [(0, "update")]])
    driver = _fedbuff(grid)
    driver.resume = RunState(tmp_path, {"run": "late"}, "fedbuff")
    save = RunState.save

    def save_then_stop(self: RunState, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        if driver.late_replies:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunState, "save", save_then_stop)
        first = driver.run(BASE)
    assert first.stopped == "interrupted" and first.extra["late_replies"] == 1 and not first.rounds
    grid = ScriptedGrid([[(0, "update")], [(1, "update")]])
    again = _fedbuff(grid)
    again.resume = RunState(tmp_path, {"run": "late"}, "fedbuff")
    resumed = again.run(BASE)
    assert [r.round for r in resumed.rounds] == [1] and resumed.stopped is None
    np.testing.assert_allclose(resumed.weights["w"], 1.5, rtol=1e-6)
    assert resumed.extra["late_replies"] == 1
