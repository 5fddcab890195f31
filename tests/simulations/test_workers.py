"""Worker processes: their envelopes are byte for byte what the engine's own process releases, the
clients' states come back, the engine trains the workers' slices itself while they start, and a
pool closed while starting leaves no process behind, and a pool whose worker exited (killed, or
failing at start) is stopped at once."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from stamen.server.driver.types import TrainTask
from stamen.simulations import parallel
from stamen.simulations.engines.inprocess import InProcessTransport, engine_path
from stamen.simulations.parallel import WorkerPool, WorkerSpec
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.models import model_structure

EF = ("codec.pipeline=topk,int8", "codec.topk.ratio=0.1", "codec.error_feedback=true")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The engine's numerics (``run_inprocess`` and every worker train on one torch thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Starting(WorkerPool):
    """A pool whose workers are never up: the engine trains their slices itself."""

    def __init__(self, workers: int) -> None:  # no processes
        self.workers = workers

    def ready(self, wait: bool = False) -> bool:
        return False


def _plan(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(
        load_scenario("smoke", ["data.num_clients=6", "clients.per_round=6", *overrides])
    )


def _transport(plan: SimulationPlan, pool: WorkerPool | None) -> InProcessTransport:
    model = model_structure(plan.cfg.task)
    return InProcessTransport(
        plan.nodes(None), plan.cfg.num_clients, model, path=engine_path(plan, model), pool=pool
    )


def _tasks(plan: SimulationPlan) -> list[TrainTask]:
    """Round 1's tasks as the driver builds them."""
    return plan.driver(_transport(plan, None), None).configure(1, plan.initial)


def _assert_no_new_children(before: set[mp.process.BaseProcess], settle: int = 0) -> None:
    """No child process beyond ``before`` is left (waiting up to 60 s for them to be reaped), and
    none appears in ``settle`` more looks 0.2 s apart (no exited worker is replaced)."""
    deadline = time.monotonic() + 60
    while set(mp.active_children()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(mp.active_children()) - before
    for _ in range(settle):
        time.sleep(0.2)
        assert not set(mp.active_children()) - before


@contextmanager
def _pool_and_victim(plan: SimulationPlan) -> Iterator[tuple[WorkerPool, Any, set[mp.process.BaseProcess]]]:
    """A started pool of one worker process, that process, and the children before it: closed on
    exit, which must leave no process behind."""
    before = set(mp.active_children())
    pool = WorkerPool(WorkerSpec(plan.cfg.task, plan.data, plan.peer, batched=False), 2)
    try:
        assert pool.ready(wait=True) and pool._pool is not None
        yield pool, pool._pool._pool[0], before
    finally:
        pool.close()
    _assert_no_new_children(before)


@pytest.mark.slow
def test_workers_leave_ctrl_c_to_the_engine() -> None:
    """A terminal's Ctrl-C reaches the whole process group: a worker that took it printed
    "Process ForkServerPoolWorker-N:" (its KeyboardInterrupt report) while the engine stopped."""
    import signal

    with _pool_and_victim(_plan()) as (pool, _, _):
        assert pool._pool is not None
        assert pool._pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN


def _busy_until_stopped(started: str) -> None:
    """A worker's task: say it started (a file), then work on (30 s at most)."""
    open(started, "w").close()
    time.sleep(30)


def test_a_round_stopped_in_forked_workers_ends_them_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The engine runs with SIGTERM raising KeyboardInterrupt (``sigterm_as_interrupt``); a forked
    worker inherited that handler, so stopping a round in the workers (Ctrl-C: ``terminate``, i.e.
    SIGTERM) made each print "Process ForkPoolWorker-N: ... KeyboardInterrupt: SIGTERM" (exit 1)."""
    import signal

    from stamen.simulations.engines.interrupt import sigterm_as_interrupt

    plan = _plan("engine.batching=off")
    monkeypatch.setattr(parallel, "_fork_is_safe", lambda device: True)
    before = set(mp.active_children())
    with sigterm_as_interrupt():
        pool = WorkerPool(WorkerSpec(plan.cfg.task, plan.data, plan.peer, batched=False), 2)
        try:
            assert pool.ready(wait=True) and pool._pool is not None and pool.start_method == "fork"
            procs = list(pool._procs)
            assert pool._pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
            started = tmp_path / "started"
            pool._pool.apply_async(_busy_until_stopped, (str(started),))  # a round in the workers
            deadline = time.monotonic() + 60
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            pool._busy = True  # (what an interrupted run() leaves)
        finally:
            pool.close()
    assert [p.exitcode for p in procs] == [-signal.SIGTERM]
    assert "KeyboardInterrupt" not in capfd.readouterr().err
    _assert_no_new_children(before)


def _kill(victim: Any) -> None:
    import os
    import signal

    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=30)


def _envelopes(transport: InProcessTransport, tasks: list[TrainTask]) -> list[bytes | None]:
    return [r.envelope for r in transport.train(tasks, 60.0)]


def test_workers_are_forks_only_where_that_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork of the engine on Linux for CPU training with no other Python thread alive; else
    the forkserver (a CUDA context does not survive a fork; another thread's locks would stay held
    in the child)."""
    import threading

    alone = [threading.main_thread()]  # (a thread an earlier test left would count here)
    monkeypatch.setattr(parallel.threading, "enumerate", lambda: alone)
    assert parallel._fork_is_safe("cpu") and parallel.context("cpu").get_start_method() == "fork"
    assert not parallel._fork_is_safe("cuda")
    assert parallel.context("cuda").get_start_method() == "forkserver"
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(30,), daemon=True)
    other.start()
    alone.append(other)
    try:
        assert not parallel._fork_is_safe("cpu")
        assert parallel.context("cpu").get_start_method() == "forkserver"
    finally:
        release.set()
        other.join()
    alone.pop()
    asked_there: list[bool] = []  # a pool made on another thread: the main thread is not waiting
    there = threading.Thread(target=lambda: asked_there.append(parallel._fork_is_safe("cpu")))
    alone.append(there)
    there.start()
    there.join()
    alone.pop()
    assert asked_there == [False]
    monkeypatch.setattr(parallel.sys, "platform", "darwin")
    assert not parallel._fork_is_safe("cpu")


@pytest.mark.slow
def test_ctrl_c_while_forking_leaves_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the engine waits for its forks: the pool is closed before the interrupt goes
    on (no caller holds it yet to close it), so no worker process is left behind."""
    import os
    import signal
    import threading

    plan = _plan("engine.batching=off")
    monkeypatch.setattr(parallel, "_fork_is_safe", lambda device: True)
    real_start = WorkerPool._start

    def slow_start(self: WorkerPool, spec: WorkerSpec, ctx: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # reaches the main thread, waiting in join
        time.sleep(0.5)
        real_start(self, spec, ctx)

    monkeypatch.setattr(WorkerPool, "_start", slow_start)
    before = set(mp.active_children())
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)  # (whatever a test left)
    try:
        with pytest.raises(KeyboardInterrupt):
            WorkerPool(WorkerSpec(plan.cfg.task, plan.data, plan.peer, batched=False), 2)
    finally:
        signal.signal(signal.SIGINT, earlier)
    assert not any(t.name == "stamen-workers" for t in threading.enumerate())
    _assert_no_new_children(before)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "forkserver"])
@pytest.mark.parametrize("batching", ["off", "on"])
def test_workers_release_what_the_engine_releases(
    batching: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds of the same clients with error feedback, so round 2's envelopes depend on the
    residual each worker sent back in the client's state. Per-client loop: the workers' envelopes
    are the serial engine's. Both paths: the same as the engine training the workers' slices
    itself (what it does while they start)."""
    plan = _plan(f"engine.batching={batching}", "engine.workers=2", *EF)
    tasks = _tasks(plan)
    spec = WorkerSpec(plan.cfg.task, plan.data, plan.peer, batched=batching == "on")
    monkeypatch.setattr(parallel, "_fork_is_safe", lambda device: method == "fork")
    pool = WorkerPool(spec, 2)
    try:
        assert pool.ready(wait=True) and pool.start_method == method
        serial, here, workers = _transport(plan, None), _transport(plan, _Starting(2)), _transport(plan, pool)
        for _ in range(2):
            got = _envelopes(workers, tasks)
            assert got == _envelopes(here, tasks) and len(set(got)) == len(tasks)
            if batching == "off":
                assert got == _envelopes(serial, tasks)
        assert pool._used  # the rounds ran in the workers
        for pid, state in here.states.items():  # the workers' states came back, residuals and all
            mine = workers.states[pid].arrays
            assert any(k.startswith("ef/") for k in mine) and mine.keys() == state.arrays.keys()
            assert all((mine[k] == v).all() for k, v in state.arrays.items())
    finally:
        pool.close()


@pytest.mark.slow
def test_a_pool_closed_while_starting_leaves_no_process() -> None:
    plan = _plan("engine.batching=off")
    before = set(mp.active_children())
    pool = WorkerPool(WorkerSpec(plan.cfg.task, plan.data, plan.peer, batched=False), 2)
    pool.close()  # returns at once; the starting thread stops the workers once they are up
    assert not pool.ready()
    pool._starting.join(timeout=120)
    assert not pool._starting.is_alive()
    _assert_no_new_children(before)
    with pytest.raises(RuntimeError, match="closed"):
        pool.run([], 1, lambda part: [])


@pytest.mark.slow
def test_a_worker_killed_mid_round_is_trained_around() -> None:
    """A worker process killed during a round (e.g. by the OOM killer) loses its task: the round
    still completes with the engine's own results, the pool is marked broken (later rounds train in
    the engine) and its close leaves no process behind. Before, the round waited forever."""
    plan = _plan("engine.batching=off", "engine.workers=2", "data.num_clients=40", "clients.per_round=40")
    tasks = _tasks(plan)
    with _pool_and_victim(plan) as (pool, victim, before):
        workers, here = _transport(plan, pool), _transport(plan, _Starting(2))
        run, calls = pool.run, list[int]()

        def run_and_kill(jobs: Any, dim: int, here_fn: Any) -> Any:
            def kill_first(part: Any) -> Any:  # the engine's own slice, after the workers' are sent
                if victim.exitcode is None:  # (here_fn also trains a lost slice: kill once)
                    _kill(victim)
                calls.append(len(part))
                return here_fn(part)

            return run(jobs, dim, kill_first)

        pool.run = run_and_kill  # type: ignore[method-assign]
        assert _envelopes(workers, tasks) == _envelopes(here, tasks)
        assert pool.broken is not None and "exited with code" in pool.broken
        assert calls in ([20], [20, 20])  # the worker's slice trained here when it was lost
        assert not pool.ready()
        _assert_no_new_children(before, settle=5)  # stopped as soon as it broke, before close():
        assert pool._pool is None  # no replacement worker left or forked


@pytest.mark.slow
def test_a_worker_killed_between_rounds_is_noticed_before_the_next() -> None:
    """A worker killed while idle may take the task queue's lock with it: its replacement never
    gets a task, and ``Pool.terminate`` would block on that lock. The next round is trained in the
    engine, and closing the pool returns and leaves no process behind."""
    plan = _plan("engine.batching=off", "engine.workers=2")
    tasks = _tasks(plan)
    with _pool_and_victim(plan) as (pool, victim, before):
        _kill(victim)
        workers, here = _transport(plan, pool), _transport(plan, _Starting(2))
        assert _envelopes(workers, tasks) == _envelopes(here, tasks)
        assert pool.broken is not None and "exited with code" in pool.broken and not pool.ready()
        _assert_no_new_children(before, settle=5)  # stopped as soon as it broke, before close()


@pytest.mark.slow
def test_a_worker_failing_at_start_stops_the_pool_before_close() -> None:
    """A worker that cannot build its data (here a data set no worker can load) exits in its
    initializer; ``multiprocessing.Pool`` would fork a replacement, which fails the same way, for
    the whole run. The pool is marked broken and stopped at once: no worker process is left or
    forked again before ``close()``; the round trains in the engine with the same results."""
    plan = _plan("engine.batching=off", "engine.workers=2")
    tasks = _tasks(plan)
    unloadable = dataclasses.replace(plan.data, dataset="no-such-dataset")
    before = set(mp.active_children())
    pool = WorkerPool(WorkerSpec(plan.cfg.task, unloadable, plan.peer, batched=False), 2)
    try:
        deadline = time.monotonic() + 120
        while pool.broken is None and time.monotonic() < deadline:
            pool.ready()  # each call checks the workers (the pool is broken once one has exited)
            time.sleep(0.2)
        assert pool.broken is not None and "exited with code" in pool.broken
        assert not pool.ready()
        _assert_no_new_children(before, settle=10)  # before close(): no respawn loop
        assert pool._pool is None and all(p.exitcode is not None for p in pool._procs)
        workers, here = _transport(plan, pool), _transport(plan, _Starting(2))
        assert _envelopes(workers, tasks) == _envelopes(here, tasks)
    finally:
        pool.close()
    pool.close()  # idempotent
    assert not pool.ready()
    _assert_no_new_children(before)


@pytest.mark.slow
def test_a_stop_interrupted_when_a_worker_died_is_finished_by_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the broken pool is being stopped (its terminate may wait seconds on a lock the
    dead worker held): the pool is kept for ``close()``, which stops it; no process is left."""
    real_stop, calls = parallel._stop, []

    def interrupted_once(pool: Any, graceful: bool, broken: bool = False) -> None:
        calls.append(broken)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_stop(pool, graceful, broken)

    with _pool_and_victim(_plan("engine.batching=off", "engine.workers=2")) as (pool, victim, _):
        monkeypatch.setattr(parallel, "_stop", interrupted_once)
        _kill(victim)
        with pytest.raises(KeyboardInterrupt):
            pool.ready()
        assert pool.broken is not None and pool._pool is not None  # kept for close()
    assert calls == [True, True]  # the interrupted stop, and close()'s
