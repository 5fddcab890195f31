"""Asynchronous runs under availability windows keep ``concurrency`` clients busy: a client whose
window opens between two arrivals is dispatched at its window's opening when a slot is free (the
virtual clock's next event is the earlier of the next arrival and that opening), not at the next
arrival. The next opening comes from a lazy heap, not a scan of every client."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from stamen.server import checkpoint_run
from stamen.server.checkpoint import records_equal
from stamen.server.driver.flower_async import GridAsyncTransport
from stamen.server.history import FederationResult
from stamen.simulations.engines import inprocess, run_engine
from stamen.simulations.engines.clock import TripMeter
from stamen.simulations.engines.inprocess import VirtualClockTransport, run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.simulations.timing import ClientTiming, TimingConfig
from stamen.simulations.window_openings import WindowOpenings

# slow clients (~70 s a trip) and short windows: openings fall between arrivals
ONOFF = ["timing.availability=onoff", "timing.mean_on_s=60", "timing.mean_off_s=600"]
SLOW = ["timing.seconds_per_example=1.0", "timing.window_policy=finish", "rounds=20"]
DIURNAL = ["timing.availability=diurnal", "timing.diurnal_on_hours=1", "timing.diurnal_spread_hours=2"]
Timeline = list[tuple[float, int, str]]
PINNED_FEDASYNC_END, PINNED_FEDBUFF_END = 285.082, 969.816  # simulated s of the 20th version


def _plan(overrides: list[str], state_dir: Path | None = None) -> SimulationPlan:
    plan = SimulationPlan.from_scenario(load_scenario("async-speeds-quick", overrides))
    plan.state_dir = state_dir
    return plan


def _recorded(plan: SimulationPlan) -> tuple[FederationResult, Timeline]:
    """The run and its timeline: ``(virtual time, +1 dispatched / -1 arrived, client)``."""
    timeline: Timeline = []
    push, pull = VirtualClockTransport.push, VirtualClockTransport.pull

    def pushed(self: VirtualClockTransport, task: Any) -> None:
        timeline.append((self.events.now, 1, task.client))
        push(self, task)

    def pulled(self: VirtualClockTransport, timeout: float) -> list[Any]:
        replies = pull(self, timeout)
        timeline.extend((self.events.now, -1, r.client) for r in replies)
        return replies

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inprocess.VirtualClockTransport, "push", pushed)
        mp.setattr(inprocess.VirtualClockTransport, "pull", pulled)
        return run_inprocess(plan), timeline


def _openings(timing: ClientTiming, client: int, end: float) -> list[float]:
    """The window openings of ``client`` in ``(0, end)`` (bounded: 10,000 windows)."""
    out, t = [], timing.next_available(client, 0.0)
    for _ in range(10_000):
        if t >= end:
            break
        out.append(t)
        t = timing.next_available(client, timing.window_end(client, t))
    return out


def _starved(timeline: Timeline, timing: ClientTiming, concurrency: int) -> list[tuple[float, int, int]]:
    """Instants before the run's end (every dispatch, arrival and window opening) at which, after
    everything at that instant, a slot was free while an idle client was inside its window:
    ``(time, busy, idle and available)``."""
    end = timeline[-1][0]
    opens = [t for c in range(timing.num_clients) for t in _openings(timing, c, end)]
    instants = sorted({t for t, _, _ in timeline if t < end} | set(opens))
    bad, busy, k = [], set(), 0
    for t in instants:
        while k < len(timeline) and timeline[k][0] <= t:
            (busy.add if timeline[k][1] > 0 else busy.discard)(timeline[k][2])
            k += 1
        idle = [c for c in range(timing.num_clients) if f"client-{c}" not in busy and timing.available(c, t)]
        if len(busy) < concurrency and idle:
            bad.append((t, len(busy), len(idle)))
    return bad


@pytest.mark.parametrize("windows", [[*ONOFF, *SLOW], [*DIURNAL, *SLOW]], ids=["onoff", "diurnal"])
def test_no_slot_stays_free_while_an_idle_client_is_in_its_window(windows: list[str]) -> None:
    """In flight never drops below min(concurrency, available clients) past one instant: checked
    after every dispatch, arrival and window opening of the recorded timeline."""
    plan = _plan(["server.mode=fedbuff", *windows])
    result, timeline = _recorded(plan)
    assert result.stopped is None and len(result.rounds) == 20
    assert _starved(timeline, plan.timing(), plan.cfg.settings.server.concurrency) == []
    dispatched_between = {t for t, d, _ in timeline if d > 0} - {t for t, d, _ in timeline if d < 0}
    assert len(dispatched_between) > 5  # dispatches at window openings, no arrival then


def test_windowed_runs_are_deterministic() -> None:
    """Same seed, same timeline and records; the simulated end is pinned (it moved with the fix:
    slots filled at window openings finish the 20 FedAsync versions sooner)."""
    overrides = ["server.mode=fedasync", *ONOFF, *SLOW]
    a, line_a = _recorded(_plan(overrides))
    b, line_b = _recorded(_plan(overrides))
    assert line_a == line_b and records_equal(a.rounds, b.rounds)
    for k, v in a.weights.items():
        np.testing.assert_array_equal(b.weights[k], v)
    assert a.rounds[-1].sim_time_s == pytest.approx(PINNED_FEDASYNC_END, abs=1e-3)


def test_windowed_run_killed_mid_buffer_resumes_as_if_never_stopped(tmp_path: Path) -> None:
    """Checkpoint/resume stays exact: the heap of openings is rebuilt, its answers the same."""
    overrides = ["server.mode=fedbuff", *ONOFF, *SLOW]
    ref = run_engine("inprocess", _plan(overrides))
    save, calls = checkpoint_run.RunState.save, []

    def save_then_stop(self: Any, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 23:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_run.RunState, "save", save_then_stop)
        first = run_inprocess(_plan(overrides, tmp_path))
    assert first.stopped == "interrupted" and 0 < len(first.rounds) < 20
    resumed = run_inprocess(_plan(overrides, tmp_path))
    assert records_equal(resumed.rounds, ref.rounds)
    for k, v in ref.weights.items():
        np.testing.assert_allclose(resumed.weights[k], v, rtol=0, atol=1e-7)
    assert ref.rounds[-1].sim_time_s == pytest.approx(PINNED_FEDBUFF_END, abs=1e-3)


def _clock(num_clients: int, config: dict[str, Any]) -> tuple[VirtualClockTransport, ClientTiming]:
    timing = ClientTiming(TimingConfig(**config), num_clients, seed=3)
    sync: Any = SimpleNamespace(clients=lambda: [f"client-{i}" for i in range(num_clients)])
    return VirtualClockTransport(sync, TripMeter(timing, 1), 600.0), timing


NIGHT = {"availability": "diurnal", "diurnal_on_hours": 1.0, "diurnal_spread_hours": 12.0}


def test_the_clock_moves_to_an_opening_only_before_the_next_arrival() -> None:
    clock, timing = _clock(5, NIGHT)
    opens = sorted(timing.next_available(i, 0.0) for i in range(5))
    clock.events.schedule(opens[0] + 1.0, "arrival")
    assert clock.advance_to_window() and clock.now() == opens[0]
    assert not clock.advance_to_window(lambda c: False) and clock.now() == opens[0]
    clock.events.schedule(opens[1], "same instant")  # an arrival at the opening comes first
    assert not clock.advance_to_window() and clock.now() == opens[0]
    always, _ = _clock(3, {})
    always.events.schedule(5.0, "arrival")
    assert not always.advance_to_window() and always.now() == 0.0
    assert not GridAsyncTransport(SimpleNamespace(), ttl_s=1.0).advance_to_window()  # type: ignore[arg-type]


def test_the_next_opening_matches_a_scan_of_every_client() -> None:
    """Random busy sets, refusals and forward moves: the heap's answer is the scan's, exactly."""
    timing = ClientTiming(TimingConfig(availability="onoff", mean_on_s=50.0, mean_off_s=200.0), 300, seed=1)
    heap, rng = WindowOpenings(timing, range(300), 0.0), np.random.default_rng(0)
    busy: set[int] = set()
    refused: set[int] = set()
    now = 0.0
    for _ in range(400):
        now += float(rng.exponential(20.0))
        for pid in rng.choice(300, 3, replace=False).tolist():
            if pid in busy:
                busy.discard(pid)
                heap.returned(pid, now)
            else:
                busy.add(pid)
        refused.add(int(rng.integers(300)))
        got = heap.first(now, busy, lambda p: p not in refused)
        free = [p for p in range(300) if p not in busy and p not in refused]
        assert got == min((timing.next_available(p, now) for p in free), default=math.inf)
    assert len(heap) <= 300


def test_the_next_opening_costs_no_scan_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 10,000 clients, after the heap is built once, each move to an opening recomputes a few
    clients' windows, not all 10,000 (the scan did per lookup)."""
    clock, timing = _clock(10_000, NIGHT)
    order = sorted(range(10_000), key=lambda i: timing.next_available(i, 0.0))
    clock.events.schedule(1e9, "a far arrival")
    assert clock.advance_to_window()  # builds the heap: one pass
    calls = []
    next_available = timing.next_available
    monkeypatch.setattr(timing, "next_available", lambda c, t: calls.append(c) or next_available(c, t))
    for pid in order[:200]:
        assert clock.now() == next_available(pid, 0.0)
        clock._busy.add(pid)  # the opened client is sent a task
        assert clock.advance_to_window()
    assert len(calls) <= 400
