"""Simulated time for the in-process engine: every client's trip from the timing model.

A synchronous round dispatches its cohort at the round's start; it closes when the last reply
arrives, or, when a client was lost (drop-out, availability window closing), at the server's reply
timeout. An asynchronous run dispatches clients one by one; their replies arrive in the order of
their trips' finishing times on a :class:`~stamen.simulations.virtual_clock.VirtualClock`, and a
lost client's task is given up at dispatch + timeout (a real server would wait that long).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.timing import ClientTiming, Trip


@dataclass
class TripMeter:
    """Trips of the virtual clients: per-client attempt counters (each dispatch draws its own trip)."""

    timing: ClientTiming
    epochs: int
    attempts: dict[int, int] = field(default_factory=dict)

    def trip(self, pid: int, at: float, reply: Reply, task: TrainTask, examples: int) -> Trip:
        """The trip of ``task`` dispatched at ``at`` (bytes really sent both ways)."""
        attempt = self.attempts.get(pid, 0)
        self.attempts[pid] = attempt + 1
        down = len(task.downlink) if task.downlink is not None else weights_bytes(task)
        return self.timing.trip(
            pid,
            at,
            attempt=attempt,
            num_examples=examples,
            epochs=self.epochs,
            bytes_down=down,
            bytes_up=reply.nbytes,
        )


def weights_bytes(task: TrainTask) -> int:
    """Payload bytes of a full-model downlink (float32 tensors), or of a cached downlink's patch."""
    patch = task.patch.to_arrays() if task.patch is not None else {}
    return sum(int(v.nbytes) for v in [*(task.weights or {}).values(), *patch.values()])


def round_end(start: float, trips: list[Trip], timeout_s: float) -> float:
    """When a synchronous round closes: its last arrival, or the timeout when a client was lost."""
    if any(not t.delivered for t in trips):
        return start + timeout_s
    return max((t.finish for t in trips), default=start)
