"""Tests of the virtual clock: ordering, determinism, and 10,000 clients without timers."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.timing import ClientTiming, TimingConfig
from stamen.simulations.virtual_clock import VirtualClock


def test_hand_computed_order_and_time() -> None:
    clock = VirtualClock()
    clock.schedule(5.0, "c", key=2)
    clock.schedule(5.0, "b", key=1)
    clock.schedule(1.0, "a", key=9)
    late = clock.schedule_in(9.0, "x", key=0)
    clock.schedule(5.0, "d", key=2)  # same time and key as "c": scheduling order decides
    assert len(clock) == 5 and clock.cancel(late) and not clock.cancel(late) and len(clock) == 4
    assert [clock.pop().payload for _ in range(4)] == ["a", "b", "c", "d"]
    assert clock.now == 5.0 and clock.peek() is None
    with pytest.raises(IndexError, match="no pending events"):
        clock.pop()
    with pytest.raises(ValueError, match="before now"):
        clock.schedule(4.0)


def test_pop_until_advances_time() -> None:
    clock = VirtualClock(start=2.0)
    for t in (3.0, 4.0, 10.0):
        clock.schedule(t, t)
    assert [e.payload for e in clock.pop_until(4.0)] == [3.0, 4.0]
    assert clock.now == 4.0 and len(clock) == 1
    clock.pop_until(8.0)
    assert clock.now == 8.0 and clock.pop().time == 10.0


def test_a_restored_clock_pops_and_numbers_as_the_original() -> None:
    """What a checkpoint keeps (pending events, time, next id) gives the same clock back."""
    clock = VirtualClock()
    for t, k, p in ((3.0, 2, "a"), (3.0, 1, "b"), (1.0, 0, "c"), (7.5, 4, "d"), (9.0, 0, "e")):
        clock.schedule(t, p, key=k)
    clock.cancel(3)
    clock.pop()
    back = VirtualClock.restored(clock.now, clock.next_seq, clock.pending())
    assert back.now == 1.0 and len(back) == len(clock) == 3
    assert back.schedule(3.0, "f", key=1) == clock.schedule(3.0, "f", key=1) == 5
    assert [(e.time, e.payload) for e in back.pending()] == [(3.0, "b"), (3.0, "f"), (3.0, "a"), (9.0, "e")]
    assert [back.pop().payload for _ in range(4)] == [clock.pop().payload for _ in range(4)]
    with pytest.raises(ValueError, match="not distinct ids below 2"):
        VirtualClock.restored(0.0, 2, clock_events(2.0, 2) * 2)  # the same ids twice
    with pytest.raises(ValueError, match="not distinct ids below 1"):
        VirtualClock.restored(0.0, 1, clock_events(2.0, 2))  # an id the clock never gave
    with pytest.raises(ValueError, match="before now"):
        VirtualClock.restored(5.0, 9, clock_events(2.0, 1))


def clock_events(time: float, n: int) -> list:  # type: ignore[type-arg]
    """``n`` pending events at ``time`` (ids 0 .. n-1)."""
    clock = VirtualClock()
    for i in range(n):
        clock.schedule(time, i)
    return clock.pending()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 5)), min_size=1, max_size=60))
def test_pops_are_sorted_by_time_key_seq(items: list[tuple[float, int]]) -> None:
    clock = VirtualClock()
    for t, k in items:
        clock.schedule(t, None, key=k)
    popped = [clock.pop() for _ in items]
    assert [(e.time, e.key, e.seq) for e in popped] == sorted((e.time, e.key, e.seq) for e in popped)


def _async_run(num_clients: int, arrivals: int, seed: int, concurrency: int) -> list[tuple[int, float]]:
    """A FedAsync-shaped loop on the clock: keep `concurrency` clients busy, re-dispatch on arrival."""
    timing = ClientTiming(
        TimingConfig(compute_sigma=1.0, compute_jitter_sigma=0.2, dropout_prob=0.1), num_clients, seed=seed
    )
    clock, attempts = VirtualClock(), [0] * num_clients
    order: list[tuple[int, float]] = []
    idle = list(range(num_clients))

    def dispatch(client: int) -> None:
        trip = timing.trip(
            client,
            clock.now,
            attempt=attempts[client],
            num_examples=40,
            epochs=1,
            bytes_down=4000,
            bytes_up=4000,
        )
        attempts[client] += 1
        clock.schedule(trip.finish, trip, key=client)

    while idle and len(clock) < concurrency:
        dispatch(idle.pop(0))
    while len(order) < arrivals:
        trip = clock.pop().payload
        assert len(clock) < concurrency  # one pending event per busy client, nothing else
        if trip.delivered:
            order.append((trip.client, clock.now))
        idle.append(trip.client)
        dispatch(idle.pop(0))
    return order


def test_async_loop_on_the_clock_is_deterministic() -> None:
    a = _async_run(200, 500, seed=3, concurrency=20)
    assert a == _async_run(200, 500, seed=3, concurrency=20)
    assert a != _async_run(200, 500, seed=4, concurrency=20)
    times = [t for _, t in a]
    assert times == sorted(times)


def test_ten_thousand_clients_need_no_timers_or_threads() -> None:
    threads = threading.active_count()
    order = _async_run(10_000, 12_000, seed=0, concurrency=10_000)
    assert len(order) == 12_000 and len({c for c, _ in order}) > 8_000  # fast clients return often
    assert threading.active_count() == threads
