"""The in-process engine keeps what lives all run out of the garbage collector's full walks: frozen
for the run (and unfrozen after it), in the engine's process and in each worker process."""

from __future__ import annotations

import gc
import multiprocessing as mp
import weakref
from collections.abc import Iterator

import pytest

from stamen.simulations import parallel
from stamen.simulations.engines import run_engine
from stamen.simulations.engines.gc_freeze import frozen_gc
from stamen.simulations.parallel import WorkerPool, WorkerSpec
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


@pytest.fixture(autouse=True)
def nothing_frozen() -> Iterator[None]:
    """Each test starts with nothing frozen and leaves nothing frozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def _plan(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(
        load_scenario("smoke", ["data.num_clients=6", "clients.per_round=3", "rounds=2", *overrides])
    )


def test_a_run_freezes_what_lives_all_run_and_unfreezes_it_after() -> None:
    during: list[int] = []
    run_engine("inprocess", _plan(), progress=lambda *args: during.append(gc.get_freeze_count()))
    assert during and min(during) > 10_000  # the imports' objects at least
    assert gc.get_freeze_count() == 0


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_callers_freeze_is_left_alone_and_no_garbage_is_kept() -> None:
    """A process that froze its own objects keeps them frozen, and a garbage cycle made after that
    is still collected once a run has ended (a second freeze, never undone, kept it for good)."""
    gc.freeze()
    before = gc.get_freeze_count()
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    with frozen_gc():
        del cycle
    assert gc.get_freeze_count() == before > 0
    gc.collect()
    assert alive() is None


def test_a_worker_freezes_what_it_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked worker (from a process that froze nothing) freezes its own start-up state."""
    monkeypatch.setattr(parallel, "_fork_is_safe", lambda device: True)
    plan = _plan("engine.batching=off")
    before = set(mp.active_children())
    pool = WorkerPool(WorkerSpec(plan.cfg.task, plan.data, plan.peer, batched=False), 2)
    try:
        assert pool.ready(wait=True) and pool._pool is not None and pool.start_method == "fork"
        assert gc.get_freeze_count() == 0
        assert pool._pool.apply(gc.get_freeze_count) > 10_000
    finally:
        pool.close()
    assert not set(mp.active_children()) - before
