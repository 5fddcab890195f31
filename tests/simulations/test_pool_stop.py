"""Stopping a worker pool whose worker died (:func:`stamen.simulations.parallel._stop`, broken).

The dead worker may have held the pool's task-queue lock (an idle worker holds it while it waits for
a task), so ``Pool.terminate`` can block forever. The stop once waited up to ``_STOP_S`` (5 s) for
it before killing the workers; it now waits only for the pool's worker handler to stop replacing
workers (``terminate`` tells it first) and kills them at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from typing import Any, cast

import pytest

import stamen.simulations.parallel as parallel

BOUND_S = 5.0  # how long the fake terminate stays blocked at most (only on the old code)


class _Proc:
    """A worker process: killing it releases the lock a fake ``terminate`` waits on."""

    def __init__(self, killed: threading.Event) -> None:
        self.killed = killed
        self.exitcode: int | None = None  # alive

    def kill(self) -> None:
        self.killed.set()

    def join(self, timeout: float | None = None) -> None:
        del timeout


class _StuckPool:
    """A pool whose task queue's lock died with a worker: ``terminate`` tells the worker handler to
    stop, then blocks on the lock, here until the workers are killed (at most ``BOUND_S``)."""

    def __init__(self) -> None:
        self.killed, self.told, self.done = threading.Event(), threading.Event(), threading.Event()
        self.released_by_kill: bool | None = None
        self._worker_handler = threading.Thread(target=self.told.wait, args=(BOUND_S,), daemon=True)
        self._worker_handler.start()
        self._pool = [_Proc(self.killed)]

    def terminate(self) -> None:
        self.told.set()
        self.released_by_kill = self.killed.wait(BOUND_S)
        self.done.set()


def test_a_broken_pool_is_killed_without_waiting_for_terminate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "_STOP_S", 60.0)  # longer than the fake's own bound
    pool = _StuckPool()
    parallel._stop(cast(Any, pool), graceful=False, broken=True)
    assert pool.killed.is_set()
    assert pool.done.wait(2 * BOUND_S)  # (the stopper thread records how terminate returned)
    assert pool.released_by_kill  # killed while terminate was still blocked (old code: it timed out)


def test_a_broken_real_pool_whose_idle_worker_held_the_queue_lock_is_stopped() -> None:
    """A real pool (fork): its idle worker, once waiting for the next task, holds the task queue's
    lock; it is killed (``terminate`` then blocks forever). The stop leaves no worker behind."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs the fork start method")
    before = set(mp.active_children())
    pool = mp.get_context("fork").Pool(1)
    assert pool.apply(os.getpid) > 0  # the worker is up, and now waits for the next task
    procs, handler = parallel._pool_internals(pool)
    assert len(procs) == 1 and procs[0].is_alive() and handler is not None and handler.is_alive()
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].join(30)
    parallel._stop(pool, graceful=False, broken=True)
    assert not handler.is_alive()  # no worker is forked any more
    assert all(p.exitcode is not None for p in parallel._pool_internals(pool)[0])
    assert not set(mp.active_children()) - before


def test_pool_internals_fall_back_where_python_lacks_them() -> None:
    assert parallel._pool_internals(cast(Any, object())) == ([], None)
