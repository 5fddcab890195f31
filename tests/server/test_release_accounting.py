"""What the privacy accounting charges beyond the accepted updates: every task and every surplus
update (RQM, synchronous and asynchronous), the reported ε of a rejected reply (local DP, DP-SGD),
secret dispatch draws under central DP, and an older checkpoint without the trip counts."""

from __future__ import annotations

import copy
import gc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stamen.protocols import CodecSpec, encode_update, keys
from stamen.server.aggregators import create
from stamen.server.checkpoint import CheckpointError, read_checkpoint
from stamen.server.checkpoint_async import capture_async, restore_async
from stamen.server.checkpoint_rules import Snapshot
from stamen.server.checkpoint_run import Part, RunState
from stamen.server.config import ServerConfig
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.downlink import FullDownlink
from stamen.server.driver.driver import AggregateMode, DriverSettings, RoundDriver
from stamen.server.driver.trip_budget import TripBudget
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.federation import assemble_async
from stamen.task.settings_load import load_settings
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec
from tests.server.test_async_driver import BASE, ScriptedTransport
from tests.server.test_async_privacy import _driver, _rqm
from tests.server.test_collect import _collector, _reply


def _eps(reply: Reply, eps: object) -> Reply:
    reply.metrics = {**reply.metrics, keys.EPSILON: eps}
    return reply


# --- 1. RQM: each task once, every surplus update on top ----------------------------------------


def test_sync_round_charges_every_task_and_every_surplus_update() -> None:
    """Asked a, b, c: a replies twice (the second is a message a released), b answers with an
    error, c never replies (its message may arrive after the timeout), x (not asked this round: a late
    reply of an earlier round) sends an update, y only an error. Charged: each task once, a's second
    and x's update; y's error carries nothing."""
    c = _collector(["a", "b", "c"])
    assert c.add(_reply("a", 1.0))
    assert not c.add(_reply("a", 1.0))
    assert not c.add(Reply("b", error="out of memory"))
    assert not c.add(_reply("x", 1.0))
    assert not c.add(Reply("y", error="boom"))
    c.finish()
    assert Counter(c.stats.seen) == {"a": 2, "b": 1, "c": 1, "x": 1}


def test_async_run_charges_tasks_in_flight_at_the_end() -> None:
    """Buffer 2, four clients in flight: c-1 replies and is sent a second task, c-2 replies and the
    last version is released; c-1's second task, c-3's and c-4's are never read. Each may have
    released its message: all are charged."""
    accountant = _rqm()
    values = {f"c-{i}": float(i) for i in range(1, 5)}
    transport = ScriptedTransport(values, ["c-1", "c-2"])
    result = _driver(transport, 1, conc=4, accountant=accountant).run(BASE)
    assert result.extra["after_end"]["in_flight"] == 3
    assert accountant.participations == {"c-1": 2, "c-2": 1, "c-3": 1, "c-4": 1}
    assert result.rounds[-1].epsilon == pytest.approx(accountant([]), rel=1e-12)


class _Duplicating(ScriptedTransport):
    """Names the task each reply answers (as Flower's transport does) and delivers ``dup``'s first
    reply twice, the copy one pull later."""

    def __init__(self, dup: str, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.dup, self.done = dup, False
        self.again: list[Reply] = []

    def pull(self, timeout: float) -> list[Reply]:
        if self.again:
            return [self.again.pop()]
        tasks = dict(self.sent)
        replies = super().pull(timeout)
        for r in replies:
            r.task = tasks[r.client]
            if r.client == self.dup and not self.done:
                self.done = True
                self.again = [copy.copy(r)]
        return replies


def test_async_duplicate_reply_does_not_hide_an_unread_task() -> None:
    """Buffer 2, two clients: c-1 answers task A and is sent task B; A's reply arrives a second time
    (dropped as late, but a message c-1 sent: charged); c-2 answers and the last version is
    released with B never read. c-1 is charged A, the surplus copy and B: three messages (counting
    max(tasks, replies read) charged two, as if the copy had been B's reply)."""
    accountant = _rqm()
    transport = _Duplicating("c-1", {"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"])
    driver = _driver(transport, 1, accountant=accountant)
    result = driver.run(BASE)
    assert result.extra["after_end"]["in_flight"] == 1 and result.extra["late_replies"] == 1
    assert accountant.participations == {"c-1": 3, "c-2": 1}
    assert result.rounds[-1].epsilon == pytest.approx(accountant([]), rel=1e-12)
    snap = Snapshot()
    tree = capture_async(driver, snap)
    fresh = _driver(transport, 1, accountant=_rqm())
    restore_async(fresh, tree, snap, result.weights, list(result.rounds))
    assert fresh.budget.surplus == {"c-1": 1}  # a resumed run keeps them
    plain = _driver(_Duplicating("", {"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"]), 1, accountant=_rqm())
    plain.run(BASE)
    assert plain.accountant is not None and plain.accountant.participations == {"c-1": 2, "c-2": 1}


def test_a_late_reply_answers_its_given_up_task_once() -> None:
    """a's task t1 was given up at the timeout, t2 is in flight: t1's late reply is its first (no
    surplus), a copy of it is surplus, t2's reply answers t2; an error to a given-up task answers it
    (no surplus, nothing read: still unread)."""
    instr = RoundInstructions(1, 0, 0, "dense", False, TaskSpec(), TrainSpec())
    t1, t2, t3 = (TrainTask("a", instr, None, None, "") for _ in range(3))
    budget = TripBudget(trips=Counter({"a": 3}))
    budget.give_up([t1, t3])
    for task in (t1, t1, t2):
        assert budget.released(Reply("a", task=task), {"a": t2})
    assert not budget.released(Reply("a", error="expired", task=t3), {"a": t2})
    assert budget.surplus == {"a": 1} and len(budget.given_up) == 0
    assert budget.unread({"a": 3}) == ["a"]  # t3: three read, one a copy


def test_given_up_tasks_are_looked_up_not_scanned() -> None:
    """Each reply naming a task scanned the whole given-up list (after a timeout with 100,000 tasks
    in flight, milliseconds per reply), and a task given up twice was answered late twice (its copy
    was no surplus). Now a reply looks its task up, and a given-up task is answered once."""
    instr = RoundInstructions(1, 0, 0, "dense", False, TaskSpec(), TrainSpec())
    budget = TripBudget(trips=Counter({"a": 2}))
    gone, kept = (
        [TrainTask("a", instr, None, None, "") for _ in range(1000)],
        TrainTask("a", instr, None, None, ""),
    )
    budget.give_up([*gone, kept])
    del gone
    gc.collect()
    budget.give_up([kept])  # named twice: still one task to answer; the dead ones leave
    assert len(budget.given_up) == 1
    assert budget.released(Reply("a", task=kept), {}) and budget.released(Reply("a", task=kept), {})
    assert budget.surplus == {"a": 1} and len(budget.given_up) == 0


def test_unread_tasks_are_those_beyond_the_messages_read() -> None:
    budget = TripBudget(cap=3, trips=Counter({"a": 3, "b": 1, "c": 2}))
    assert budget.unread({"a": 1, "b": 2, "c": 2}) == ["a", "a"]


# --- 2. the reported ε of a rejected reply ------------------------------------------------------


def test_sync_counts_the_valid_epsilon_of_a_rejected_update() -> None:
    """a's update exceeds the norm bound, x was not asked this round: both are rejected, but each
    reports its own spend (4, 6), which counts; b's malformed ε (-1) counts for nothing."""
    c = _collector(["a", "b", "g"], max_norm=0.5, norm_ratio=0)
    assert not c.add(_eps(_reply("a", 1.0), 4.0))
    assert not c.add(_eps(_reply("x", 0.01), 6.0))
    assert not c.add(_eps(_reply("b", 0.01), -1.0))
    assert c.add(_eps(_reply("g", 0.01), 2.0))
    c.finish()
    assert c.stats.client_epsilon == 6.0


class _Reporting(ScriptedTransport):
    """Each reply reports ``eps[client]`` as its client's ε."""

    def __init__(self, eps: dict[str, float], *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.eps = eps

    def pull(self, timeout: float) -> list[Reply]:
        return [_eps(r, self.eps[r.client]) for r in super().pull(timeout)]


def test_async_counts_the_valid_epsilon_of_a_rejected_update() -> None:
    """c-1 names a version the server never sent (rejected) and reports ε 5; c-2 and c-3 fill the
    buffer reporting 1: the worst client's ε is 5."""
    values = {"c-1": 1.0, "c-2": 2.0, "c-3": 3.0}
    transport = _Reporting({"c-1": 5.0, "c-2": 1.0, "c-3": 1.0}, values, ["c-1", "c-2", "c-3"], {"c-1": 7})
    result = _driver(transport, 1, conc=3).run(BASE)
    assert result.rounds[0].rejected == 1
    assert result.rounds[-1].epsilon == pytest.approx(5.0)


# --- 3. FedBuff's dispatch draws under central DP -----------------------------------------------

CENTRAL_FEDBUFF = [
    "privacy.mode=central",
    "aggregation.rule=mean",
    "server.mode=fedbuff",
    "server.buffer_size=2",
]


def _dispatch_state(noise: str) -> tuple[bool, object]:
    cfg = ServerConfig.from_settings(load_settings("smoke", [*CENTRAL_FEDBUFF, f"privacy.noise={noise}"]))
    driver = assemble_async(cfg, ScriptedTransport({"c-1": 1.0}, []), BASE)
    return driver.s.secret_dispatch, driver.rng.bit_generator.state["state"]


def test_central_dp_dispatch_draws_are_secret_unless_seeded() -> None:
    """Two assemblies of one configuration: with secret noise the dispatch generators differ (OS
    entropy), with seeded noise they are the seed's, identical."""
    (secret_a, state_a), (_, state_b) = _dispatch_state("secret"), _dispatch_state("secret")
    assert secret_a and state_a != state_b
    (seeded, state_c), (_, state_d) = _dispatch_state("seeded"), _dispatch_state("seeded")
    assert not seeded and state_c == state_d


# --- 4. a checkpoint without the trip counts ----------------------------------------------------


def _old_tree(driver: object) -> tuple[dict[str, object], Snapshot]:
    snap = Snapshot()
    tree = capture_async(driver, snap)  # type: ignore[arg-type]
    del tree["trips"]  # as written before the counts were kept
    return tree, snap


def test_older_checkpoint_without_trip_counts_is_refused_when_they_bound_privacy(tmp_path: Path) -> None:
    """Under a trip cap, resuming with every count at zero would allow each client its whole budget
    again: refused, naming the file. Without a cap (nor RQM) the counts bound nothing: resumed."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, [])
    for cap in (2, 0):
        old = _driver(transport, 3, max_trips=cap)
        old.begin(BASE)
        tree, snap = _old_tree(old)
        fresh = _driver(transport, 3, max_trips=cap)
        fresh.resume = RunState(tmp_path, {}, "fedbuff")
        if cap:
            with pytest.raises(
                CheckpointError, match=r"checkpoint\.safetensors lacks the tasks sent to each"
            ):
                restore_async(fresh, tree, snap, BASE, [])
        else:
            restore_async(fresh, tree, snap, {k: np.asarray(v) for k, v in BASE.items()}, [])
            assert fresh.budget.trips == Counter()


def test_older_checkpoint_without_trip_counts_is_refused_under_rqm_without_a_cap(tmp_path: Path) -> None:
    """RQM calibrated by its noise alone (no trip cap): the trip counts still bound what it charges
    (every task sent, read or not), so an older checkpoint without them is refused too."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, [])
    old = _driver(transport, 3, max_trips=0, accountant=_rqm())
    old.begin(BASE)
    tree, snap = _old_tree(old)
    fresh = _driver(transport, 3, max_trips=0, accountant=_rqm())
    fresh.resume = RunState(tmp_path, {}, "fedbuff")
    with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors lacks the tasks sent to each"):
        restore_async(fresh, tree, snap, BASE, [])


def test_older_checkpoint_without_trip_counts_is_refused_under_local_dp_without_a_cap(
    tmp_path: Path,
) -> None:
    """Local DP calibrated by its noise alone: the trip counts bound the ε the server reports (a
    resumed deployment's clients count from zero), so an older checkpoint without them is refused."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, [])
    old = _driver(transport, 3, max_trips=0)
    old.begin(BASE)
    tree, snap = _old_tree(old)
    fresh = _driver(transport, 3, max_trips=0)
    fresh.client_bound = lambda most: float(most)  # as task_bound(cfg) sets it under local DP
    fresh.resume = RunState(tmp_path, {}, "fedbuff")
    with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors lacks the tasks sent to each"):
        restore_async(fresh, tree, snap, BASE, [])


class _Killed(BaseException):
    """The server process dies (nothing after this runs; the driver does not catch it)."""


class _DiesAfterPush(ScriptedTransport):
    """The server dies right after its ``n``-th task is pushed: the node has it, and may train and
    release its update, but nothing the driver does after the push happens."""

    def __init__(self, n: int, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.n, self.pushed = n, 0

    def push(self, task: object) -> None:
        super().push(task)  # type: ignore[arg-type]
        self.pushed += 1
        if self.pushed == self.n:
            raise _Killed


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_a_task_is_counted_in_the_checkpoint_before_it_is_pushed(tmp_path: Path, n: int) -> None:
    """Under a trip cap, the checkpoint a deployment resumes from counts every task sent, including
    the ones pushed after the last handled reply (else each crash lets a client be sent more tasks
    than its noise was calibrated for, and RQM never charges them)."""
    transport = _DiesAfterPush(n, {"c-1": 1.0, "c-2": 2.0, "c-3": 3.0}, ["c-1", "c-2", "c-3"] * 3)
    driver = _driver(transport, 4, conc=2, max_trips=5)
    driver.resume = RunState(tmp_path, {}, "fedbuff")
    with pytest.raises(_Killed):
        driver.run(BASE)
    ck = read_checkpoint(tmp_path)
    assert ck is not None and sum(ck.state["driver"]["trips"].values()) == n


# --- 5. a synchronous deployment that dies after pushing a round's tasks ------------------------

SYNC_CLIENTS = ("c-1", "c-2", "c-3")


class _SyncNodes:
    """A deployment's nodes for the round driver: every task asked gets its update (``+1``); in the
    ``crash``-th round the server dies (``exc``) once the tasks are pushed, before any reply."""

    def __init__(self, crash: int = 0, exc: type[BaseException] = _Killed) -> None:
        self.crash, self.exc, self.rounds = crash, exc, 0

    def clients(self) -> list[str]:
        return list(SYNC_CLIENTS)

    def now(self) -> float:
        return float("nan")

    def train(self, tasks: list[TrainTask], timeout: float) -> list[Reply]:
        self.rounds += 1
        if self.rounds == self.crash:
            raise self.exc  # the nodes hold the tasks and may release their updates
        replies = []
        for t in tasks:
            data = encode_update(
                {"w": np.ones(3, np.float32)},
                CodecSpec.parse("dense"),
                base_hash=t.expected_base,
                version=t.instructions.version,
                sender=t.client,
                rng=np.random.default_rng(0),
            )
            replies.append(Reply(t.client, envelope=data, metrics={keys.NUM_EXAMPLES: 1}, nbytes=len(data)))
        return replies


def _sync_driver(nodes: _SyncNodes, state_dir: Path | None, **parts: Part) -> RoundDriver:
    settings = DriverSettings(rounds=3, per_round=3, seed=0, timeout_s=1.0, eval_every=1)

    def instructions(rnd: int, version: int) -> RoundInstructions:
        return RoundInstructions(rnd, version, 0, "dense", False, TaskSpec(), TrainSpec())

    rule, policy = create("mean"), CollectPolicy(norm_ratio=0)
    mode = AggregateMode(rule, 1.0)
    driver = RoundDriver(settings, nodes, instructions, mode, FullDownlink(), policy, rule, accountant=_rqm())
    if state_dir is not None:
        driver.resume = RunState(state_dir, {}, "sync", parts)
    return driver


def _charged(state_dir: Path) -> tuple[int, dict[str, int]]:
    ck = read_checkpoint(state_dir)
    assert ck is not None
    return ck.step, ck.state["driver"]["accountant"]["participations"]


@pytest.mark.parametrize("exc", [_Killed, KeyboardInterrupt])
@pytest.mark.parametrize("crashes", [1, 2])
def test_sync_deployment_charges_the_tasks_of_a_round_the_server_died_in(
    tmp_path: Path, exc: type[BaseException], crashes: int
) -> None:
    """The server dies (killed, or Ctrl-C) after pushing round 2's tasks, ``crashes`` times: each
    node may have released that update, so the resumed run charges it on top of the three rounds'
    tasks (before, the crashed attempts' tasks were never charged)."""
    for i in range(crashes):
        nodes = _SyncNodes(2 if i == 0 else 1, exc)  # a resumed run's first push is round 2's
        if exc is _Killed:
            with pytest.raises(_Killed):
                _sync_driver(nodes, tmp_path).run(BASE)
        else:
            assert _sync_driver(nodes, tmp_path).run(BASE).stopped == "interrupted"
    assert _charged(tmp_path) == (1, {c: 1 + crashes for c in SYNC_CLIENTS})
    driver = _sync_driver(_SyncNodes(), tmp_path)
    result = driver.run(BASE)
    assert result.stopped is None and result.extra["resumed_from"] == 1
    assert driver.accountant is not None
    assert driver.accountant.participations == {c: 3 + crashes for c in SYNC_CLIENTS}
    assert _charged(tmp_path) == (3, {c: 3 + crashes for c in SYNC_CLIENTS})
    assert result.rounds[-1].epsilon == pytest.approx(driver.accountant([]), rel=1e-12)


def test_sync_deployment_charges_each_task_once_without_a_crash(tmp_path: Path) -> None:
    """No crash: every round's checkpoint holds what the rounds charged (each task once), the
    charge written before a round's push is replaced by the round's own, and the records' ε equal
    a run without a state-dir's."""
    seen: list[tuple[int, dict[str, int]]] = []
    result = _sync_driver(_SyncNodes(), tmp_path).run(BASE, lambda rec: seen.append(_charged(tmp_path)))
    assert seen == [(r, {c: r for c in SYNC_CLIENTS}) for r in (1, 2, 3)]
    plain = _sync_driver(_SyncNodes(), None).run(BASE)
    assert [r.epsilon for r in result.rounds] == [r.epsilon for r in plain.rounds]
    np.testing.assert_allclose(result.weights["w"], plain.weights["w"], rtol=0, atol=0)


def test_sync_simulation_keeps_its_checkpoints(tmp_path: Path) -> None:
    """A simulation (its engine's state in the checkpoint) writes no charge before the push: its
    clients die with the server, and the round they were in is run again. A checkpoint without
    that charge (a simulation's, or one written before it) resumes a deployment as before."""
    clients: Part = (lambda snap: {}, lambda tree, snap: None)
    with pytest.raises(_Killed):
        _sync_driver(_SyncNodes(2), tmp_path, clients=clients).run(BASE)
    assert _charged(tmp_path) == (1, {c: 1 for c in SYNC_CLIENTS})
    result = _sync_driver(_SyncNodes(), tmp_path).run(BASE)
    assert result.extra["resumed_from"] == 1 and [r.round for r in result.rounds] == [1, 2, 3]
    assert _charged(tmp_path) == (3, {c: 3 for c in SYNC_CLIENTS})
