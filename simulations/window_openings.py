"""The next availability-window opening among idle clients, without a scan of every client.

The asynchronous in-process engine asks, whenever a slot is free and no idle client is ready, when
the next idle client that may still be sent a task opens its window
(:meth:`~stamen.simulations.engines.inprocess.VirtualClockTransport.advance_to_window`). A scan of
every client costs ~30 ms at 10,000 clients; this keeps a lazy min-heap of ``(time, client)``
instead, at most one entry per client (memory bounded by the population):

- an entry ``t`` was computed as ``next_available(client, t0)`` for some ``t0 <= now``; when
  ``t >= now`` it is therefore the client's first available time ``>= now`` (no window opened in
  between), and when ``t < now`` it is recomputed at ``now`` when it surfaces;
- a client that is busy (its task in flight) when its entry surfaces is parked, and put back when its
  reply arrives (:meth:`WindowOpenings.returned`); one that ``eligible`` refuses is dropped for good
  (the trip budget never gives tasks back).

An answer is thus a function of ``now``, the busy clients and ``eligible`` alone, whatever the
heap's history: a resumed run rebuilds it and gets the same answers (nothing to checkpoint).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Container, Sequence

from stamen.simulations.timing import ClientTiming

__all__ = ["WindowOpenings"]


class WindowOpenings:
    """First available times of the clients ``pids`` at or after a time that only moves forward.

    Parameters
    ----------
    timing : ClientTiming
        The clients' availability windows.
    pids : sequence of int
        The clients.
    now : float
        The time the entries are computed at (the clock's time when built).
    """

    def __init__(self, timing: ClientTiming, pids: Sequence[int], now: float) -> None:
        self.timing = timing
        self._heap = [(timing.next_available(p, now), p) for p in pids]
        heapq.heapify(self._heap)
        self._parked: set[int] = set()

    def __len__(self) -> int:
        """Entries held (at most one per client)."""
        return len(self._heap)

    def first(self, now: float, busy: Container[int], eligible: Callable[[int], bool]) -> float:
        """The first time ``>= now`` at which a client neither ``busy`` nor refused by ``eligible``
        is available (``inf``: none ever is); ``now`` never decreases from call to call and
        ``eligible`` never takes back a refusal. Each entry is popped or recomputed at most once."""
        heap = self._heap
        while heap:
            t, pid = heap[0]
            if pid in busy:
                heapq.heappop(heap)
                self._parked.add(pid)
            elif not eligible(pid):
                heapq.heappop(heap)
            elif t < now:
                heapq.heapreplace(heap, (self.timing.next_available(pid, now), pid))
            else:
                return t
        return math.inf

    def returned(self, pid: int, now: float) -> None:
        """``pid``'s task came back at ``now``: it is idle again (its entry, if parked, back in)."""
        if pid in self._parked:
            self._parked.discard(pid)
            heapq.heappush(self._heap, (self.timing.next_available(pid, now), pid))
