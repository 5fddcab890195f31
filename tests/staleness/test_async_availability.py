"""Asynchronous runs with availability windows: when no task is in flight and no client is inside a
window, the virtual clock jumps to the first window opening (a synchronous round's trip waits for its
client's window the same way); a deployment waits, bounded, for a node to connect."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from stamen.server.driver import flower_async
from stamen.server.driver.flower_async import GridAsyncTransport
from stamen.simulations.engines import run_engine
from stamen.simulations.engines.clock import TripMeter
from stamen.simulations.engines.inprocess import VirtualClockTransport
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.simulations.timing import ClientTiming, TimingConfig

# on 1 h a day, windows opening in [0, 12 h): none is open at t = 0 (window k=-1 closed by -11 h)
NIGHT = {"availability": "diurnal", "diurnal_on_hours": 1.0, "diurnal_spread_hours": 12.0}


def _clock(num_clients: int) -> tuple[VirtualClockTransport, ClientTiming]:
    timing = ClientTiming(TimingConfig(**NIGHT), num_clients, seed=3)  # type: ignore[arg-type]
    sync: Any = SimpleNamespace(clients=lambda: [f"client-{i}" for i in range(num_clients)])
    return VirtualClockTransport(sync, TripMeter(timing, 1), 600.0), timing


def test_the_virtual_clock_jumps_to_the_first_window_opening() -> None:
    clock, timing = _clock(5)
    assert not any(clock.ready(c) for c in clock.clients())
    assert clock.wait_ready()
    assert clock.now() == pytest.approx(min(timing.phase), rel=1e-12) and clock.now() > 0
    assert [clock.ready(c) for c in clock.clients()].count(True) == 1
    clock.events.schedule(clock.now() + 5.0, "reply")
    assert not clock.wait_ready() and clock.now() == pytest.approx(min(timing.phase), rel=1e-12)


def test_the_jump_goes_to_the_first_window_of_an_eligible_client() -> None:
    """The driver passes the clients with privacy budget left: a spent client's earlier window is
    skipped (waiting for it would leave nobody to send a task to, and the run would stop)."""
    clock, timing = _clock(5)
    first = min(range(5), key=lambda i: timing.phase[i])
    assert clock.wait_ready(lambda c: c != f"client-{first}")
    others = [timing.next_available(i, 0.0) for i in range(5) if i != first]
    assert clock.now() == pytest.approx(min(others), rel=1e-12) and clock.now() > timing.phase[first]
    assert [c for c in clock.clients() if clock.ready(c)] != [f"client-{first}"]


def test_a_timing_model_with_no_window_ever_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timing = _clock(2)
    monkeypatch.setattr(timing, "next_available", lambda client, time: math.inf)
    with pytest.raises(ValueError, match=r"^no client is available to train at simulated t=0s or later$"):
        clock.wait_ready()


def test_async_run_outside_every_window_waits_for_one_and_completes() -> None:
    """The smoke scenario under FedBuff, nobody available at t = 0: the run completes its three
    versions, the first one after the first window opened (the wait is simulated time)."""
    windows = [f"timing.{k}={v}" for k, v in NIGHT.items()]
    overrides = ["server.mode=fedbuff", "server.buffer_size=2", *windows]
    plan = SimulationPlan.from_scenario(load_scenario("smoke", overrides))
    timing = plan.timing()
    opens = min(timing.next_available(i, 0.0) for i in range(plan.cfg.num_clients))
    result = run_engine("inprocess", plan)
    assert [r.round for r in result.rounds] == [1, 2, 3] and result.stopped is None
    assert opens == pytest.approx(584.878, abs=1e-3)  # the first window of the seeded draw
    assert result.rounds[0].sim_time_s > opens


class _Nodes:
    """A grid whose first ``empty`` queries find no node connected."""

    def __init__(self, empty: int) -> None:
        self.empty, self.queries = empty, 0

    def clients(self) -> list[str]:
        self.queries += 1
        return [] if self.queries <= self.empty else ["client-0"]


def test_a_deployment_waits_for_a_node_between_polls_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(flower_async.time, "sleep", sleeps.append)
    nodes: Any = _Nodes(empty=2)
    assert GridAsyncTransport(nodes, ttl_s=600.0).wait_ready()
    assert nodes.queries == 3 and sleeps == [flower_async.NODE_POLL_S] * 2
    gone: Any = _Nodes(empty=10**9)
    assert not GridAsyncTransport(gone, ttl_s=0.0).wait_ready() and gone.queries == 1
