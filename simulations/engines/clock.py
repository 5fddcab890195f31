"""Simulated time for the in-process engine: every client's trip from the timing model.

A synchronous round dispatches its cohort at the round's start; it closes when the last reply
arrives, or, when a client was lost (drop-out, availability window closing), at the server's reply
timeout. An asynchronous run dispatches clients one by one; their replies arrive in the order of
their trips' finishing times on a :class:`~stamen.simulations.virtual_clock.VirtualClock`, and a
lost client's task is given up at dispatch + timeout (a real server would wait that long).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stamen.protocols.keys import NUM_EXAMPLES
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.timing import ClientTiming, Trip


@dataclass
class TripMeter:
    """Trips of the virtual clients: per-client attempt counters (each dispatch draws its own trip)."""

    timing: ClientTiming
    epochs: int
    attempts: dict[int, int] = field(default_factory=dict)
    sizes: np.ndarray | None = None  # (K,) every client's partition size, by partition id

    def examples(self, pid: int, reply: Reply, task: TrainTask) -> int:
        """What client ``pid`` trained on: its reported ``num-examples``, or, under client-side DP
        (whose replies report a constant), its partition size when ``sizes`` is known."""
        if self.sizes is not None and task.instructions.train.private_reply:
            return int(self.sizes[pid])
        return int(reply.metrics.get(NUM_EXAMPLES, 0))

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

    def trips(
        self, pids: Sequence[int], at: float, replies: Sequence[Reply], tasks: Sequence[TrainTask]
    ) -> list[Trip]:
        """:meth:`trip` for a cohort dispatched together at ``at``: the same trips (attempts counted
        in cohort order), with the per-trip draws made at once (:meth:`ClientTiming.trips`)."""
        attempts = []
        for pid in pids:
            attempts.append(self.attempts.get(pid, 0))
            self.attempts[pid] = attempts[-1] + 1
        down = downlink_sizes(tasks)
        return self.timing.trips(
            np.asarray(pids, dtype=np.int64),
            at,
            attempts=np.asarray(attempts, dtype=np.int64),
            num_examples=np.array(
                [self.examples(p, r, t) for p, r, t in zip(pids, replies, tasks, strict=True)], dtype=np.int64
            ),
            epochs=self.epochs,
            bytes_down=np.asarray(down, dtype=np.int64),
            bytes_up=np.array([r.nbytes for r in replies], dtype=np.int64),
        )


def downlink_sizes(tasks: Sequence[TrainTask]) -> list[int]:
    """Each task's downlink bytes; tasks that share their weights and patch objects are summed once
    (a cached downlink's patches differ by the version each client holds: keyed by both)."""
    sizes: dict[tuple[int, int], int] = {}
    return [
        len(t.downlink)
        if t.downlink is not None
        else sizes.setdefault((id(t.weights), id(t.patch)), weights_bytes(t))
        for t in tasks
    ]


def weights_bytes(task: TrainTask) -> int:
    """Payload bytes of a full-model downlink (float32 tensors), or of a cached downlink's patch."""
    patch = task.patch.to_arrays() if task.patch is not None else {}
    return sum(int(v.nbytes) for v in [*(task.weights or {}).values(), *patch.values()])


def round_end(start: float, trips: list[Trip], timeout_s: float) -> float:
    """When a synchronous round closes: its last arrival, or the timeout when a client was lost."""
    if any(not t.delivered for t in trips):
        return start + timeout_s
    return max((t.finish for t in trips), default=start)
