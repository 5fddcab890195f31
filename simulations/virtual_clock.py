"""A virtual clock: an event queue of completion times that advances simulated time.

The in-process engine runs asynchronous federation on simulated seconds instead of wall time: a
client's local update is computed when it is dispatched, and its *arrival* is scheduled at the
simulated time the timing model gives (:mod:`stamen.simulations.timing`). The server then pops
arrivals in time order. There is no timer or thread per client: a pending client is one heap
entry (``O(log n)`` to schedule and pop), so 10,000 virtual clients cost their local-update work
plus a few microseconds each (FedScale and FederatedScope simulate asynchronous FL the same way).

Ordering is total and deterministic: by ``time``, then by the caller's ``key`` (e.g. the client
id, so simultaneous arrivals come in client order, matching "sort replies by node"), then by
scheduling order.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Event:
    """A scheduled event; events order by ``(time, key, seq)``.

    Attributes
    ----------
    time : float
        Simulated seconds at which the event happens.
    key : int
        Tie-breaker chosen by the caller (e.g. the client id).
    seq : int
        Scheduling order (unique per clock); also the event's id for :meth:`VirtualClock.cancel`.
    payload : Any
        What the caller attached (not compared).
    """

    time: float
    key: int
    seq: int
    payload: Any = field(compare=False, default=None)


class VirtualClock:
    """Simulated time advanced by popping scheduled events in order.

    Parameters
    ----------
    start : float, default 0.0
        Initial simulated time in seconds (finite, ``>= 0``).
    """

    def __init__(self, start: float = 0.0) -> None:
        if not (math.isfinite(start) and start >= 0):
            raise ValueError(f"VirtualClock: start must be a finite time >= 0, got {start!r}")
        self._now = float(start)
        self._heap: list[Event] = []
        self._seq = 0
        self._live: set[int] = (
            set()
        )  # ids of pending events; a cancelled one stays in the heap until it surfaces

    @property
    def now(self) -> float:
        """Current simulated time in seconds (the time of the last popped event, or ``start``)."""
        return self._now

    def __len__(self) -> int:
        """Pending (not cancelled) events."""
        return len(self._live)

    def schedule(self, time: float, payload: Any = None, *, key: int = 0) -> int:
        """Schedule ``payload`` at absolute simulated ``time`` (``>= now``); returns the event id."""
        t = float(time)
        if not math.isfinite(t) or t < self._now:
            raise ValueError(
                f"VirtualClock: cannot schedule at {time!r}, before now ({self._now}) or not finite"
            )
        if isinstance(key, bool) or not isinstance(key, int):
            raise ValueError(f"VirtualClock: key must be an int, got {key!r}")
        seq = self._seq
        self._seq += 1
        heapq.heappush(self._heap, Event(t, key, seq, payload))
        self._live.add(seq)
        return seq

    def schedule_in(self, delay: float, payload: Any = None, *, key: int = 0) -> int:
        """Schedule ``payload`` ``delay >= 0`` simulated seconds from now; returns the event id."""
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"VirtualClock: delay must be a finite number >= 0, got {delay!r}")
        return self.schedule(self._now + delay, payload, key=key)

    def cancel(self, event_id: int) -> bool:
        """Cancel a pending event; ``False`` if it already ran, was cancelled, or never existed."""
        if event_id not in self._live:
            return False
        self._live.discard(event_id)
        return True

    def peek(self) -> Event | None:
        """The next event without popping it (``None`` when empty)."""
        self._drop_cancelled()
        return self._heap[0] if self._heap else None

    def pop(self) -> Event:
        """Pop the next event and advance ``now`` to its time; ``IndexError`` when empty."""
        self._drop_cancelled()
        if not self._heap:
            raise IndexError("VirtualClock: no pending events")
        event = heapq.heappop(self._heap)
        self._live.discard(event.seq)
        self._now = event.time
        return event

    def pop_until(self, time: float) -> list[Event]:
        """Pop every event at or before ``time`` in order, then advance ``now`` to ``time``."""
        if not (math.isfinite(time) and time >= self._now):
            raise ValueError(f"VirtualClock: cannot advance to {time!r} (now is {self._now})")
        out: list[Event] = []
        while (nxt := self.peek()) is not None and nxt.time <= time:
            out.append(self.pop())
        self._now = float(time)
        return out

    def pending(self) -> list[Event]:
        """The pending (not cancelled) events in the order they will be popped (a checkpoint's)."""
        return sorted(e for e in self._heap if e.seq in self._live)

    @property
    def next_seq(self) -> int:
        """The id the next scheduled event gets."""
        return self._seq

    @classmethod
    def restored(cls, now: float, next_seq: int, events: list[Event]) -> VirtualClock:
        """A clock at ``now`` holding ``events`` (:meth:`pending` of a checkpointed clock), whose
        next event id is ``next_seq``; ``ValueError`` when they cannot come from one clock."""
        clock = cls(now)
        seqs = {e.seq for e in events}
        if len(seqs) != len(events) or any(not 0 <= q < next_seq for q in seqs):
            raise ValueError(f"VirtualClock: event ids {sorted(seqs)} are not distinct ids below {next_seq}")
        if any(not (math.isfinite(e.time) and e.time >= now) for e in events):
            raise ValueError(f"VirtualClock: an event is scheduled before now ({now}) or not finite")
        clock._heap, clock._live, clock._seq = sorted(events), seqs, next_seq
        return clock

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].seq not in self._live:
            heapq.heappop(self._heap)
