"""How many tasks a driver may send each client: the privacy cap of FedAsync / FedBuff, and of a
synchronous deployment's round run again after a crash.

Local DP, DP-SGD and RQM are calibrated (``privacy.calibration = "target_epsilon"``) for a client that
releases at most ``rounds`` updates. A synchronous round asks a client at most once, but a round run
again after the server died may ask it a second time (its node kept the first task and may have
released that update: the round driver draws its cohort among the clients with tasks left), and an
asynchronous run sends a client a new task whenever it is idle, so a fast client could release more
updates than that and spend more than the target ε. The driver therefore sends no client more than
``cap`` tasks (each task is at most one released update, whether its reply is accepted, rejected,
late or never read), draws only among clients with tasks left, and stops with ``"privacy budget
exhausted"`` when nobody it could send to has any left (:class:`TripBudget`).

What RQM charges at the end of a run comes from the same counts: every task once, read or not, and
every further reply on top (a second copy of a reply, a reply to no task of this server).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from stamen.server.driver.task_counts import TaskCounts
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.privacy.central import BudgetExhausted


@dataclass
class TripBudget:
    """Tasks sent to each client, against ``cap`` (0: no cap), and the released replies that answered
    no task not answered before (``surplus``); both are checkpointed. ``trips`` is always a
    :class:`~stamen.server.driver.task_counts.TaskCounts` (one assigned, as a restore does, is
    converted), so :meth:`most` follows every change."""

    cap: int = 0
    trips: TaskCounts = field(default_factory=TaskCounts)
    surplus: Counter[str] = field(default_factory=Counter)
    # tasks in flight at a timeout and not answered since, by id (unique while the task lives: a
    # dead entry matches no task); weak: a reply naming one keeps it alive (never checkpointed)
    given_up: dict[int, weakref.ref[TrainTask]] = field(default_factory=dict)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "trips" and not isinstance(value, TaskCounts):
            value = TaskCounts(value)
        super().__setattr__(name, value)

    def allows(self, client: str) -> bool:
        """Whether ``client`` may be sent one more task."""
        return self.cap <= 0 or self.trips[client] < self.cap

    def spend(self, client: str) -> None:
        """Count one task sent to ``client``."""
        self.trips[client] += 1

    def spend_all(self, clients: Iterable[str]) -> None:
        """Count one task sent to each of ``clients`` (a client named twice: two tasks)."""
        for client in clients:
            self.trips[client] += 1

    def most(self) -> int:
        """The most tasks sent to one client (:meth:`TaskCounts.most`, kept as they are counted)."""
        return self.trips.most()

    def spent(self, clients: Sequence[str]) -> bool:
        """Under a cap, every one of ``clients`` has had its tasks."""
        return self.cap > 0 and not any(self.allows(c) for c in clients)

    def released(self, reply: Reply, in_flight: Mapping[str, TrainTask]) -> bool:
        """``reply`` is a message its client released: it carries an update (no error) and comes from
        a client this server sent a task to (late and after-the-end replies included). One that is
        not the first reply to a task in flight or given up (a copy, a reply to no task) is noted in
        ``surplus``: it answers no task, so it hides none of the unread ones (:meth:`unread`)."""
        late = reply.task is not None and self._answered_late(reply.task)  # an update or an error
        if reply.error is not None or self.trips[reply.client] <= 0:
            return False
        task = in_flight.get(reply.client)
        if not late and not (task is not None and (reply.task is None or reply.task is task)):
            self.surplus[reply.client] += 1
        return True

    def _answered_late(self, task: TrainTask) -> bool:
        """``task`` was given up and had no reply since: it has one now (no longer given up)."""
        ref = self.given_up.get(id(task))  # O(1) per reply: a list was scanned for each
        if ref is None or ref() is not task:
            return False
        del self.given_up[id(task)]
        return True

    def give_up(self, tasks: Iterable[TrainTask]) -> None:
        """``tasks`` had no reply before the timeout: a late reply to one of them is its first."""
        live = {key: ref for key, ref in self.given_up.items() if ref() is not None}
        self.given_up = live | {id(t): weakref.ref(t) for t in tasks}  # a task given up twice: once

    def unread(self, read: Mapping[str, int]) -> list[str]:
        """Each client once for every task it was sent beyond the ``read`` messages charged to it
        that answered one (``read`` less ``surplus``): what the accountant still owes for the run to
        charge every task once and every surplus reply on top."""
        answered = {c: read.get(c, 0) - self.surplus[c] for c in self.trips}
        return [c for c, n in sorted(self.trips.items()) for _ in range(max(0, n - answered[c]))]

    def refuse(self, clients: Sequence[str]) -> None:
        """Nobody could be sent a task: when the cap held one of ``clients`` back, the budget is what
        ran out (:class:`BudgetExhausted`, the run stops); otherwise return."""
        if self.cap > 0 and any(not self.allows(c) for c in clients):
            raise BudgetExhausted(
                f"no client with privacy budget left can train: each may be sent {self.cap} tasks, the "
                "releases its noise was calibrated for; the run stops here"
            )
