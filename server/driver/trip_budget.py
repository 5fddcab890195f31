"""How many tasks the asynchronous driver may send each client: the privacy cap of FedAsync / FedBuff.

Local DP, DP-SGD and RQM are calibrated (``privacy.calibration = "target_epsilon"``) for a client that
releases at most ``rounds`` updates. A synchronous round asks a client at most once, but an
asynchronous run sends a client a new task whenever it is idle, so a fast client could release more
updates than that and spend more than the target ε. The driver therefore sends no client more than
``cap`` tasks (each task is at most one released update, whether its reply is accepted, rejected,
late or never read), draws only among clients with tasks left, and stops with ``"privacy budget
exhausted"`` when nobody it could send to has any left (:class:`TripBudget`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stamen.server.driver.types import Reply
from stamen.server.privacy.central import BudgetExhausted


@dataclass
class TripBudget:
    """Tasks sent to each client, against ``cap`` (0: no cap); ``trips`` is checkpointed."""

    cap: int = 0
    trips: Counter[str] = field(default_factory=Counter)

    def allows(self, client: str) -> bool:
        """Whether ``client`` may be sent one more task."""
        return self.cap <= 0 or self.trips[client] < self.cap

    def spend(self, client: str) -> None:
        """Count one task sent to ``client``."""
        self.trips[client] += 1

    def spent(self, clients: Sequence[str]) -> bool:
        """Under a cap, every one of ``clients`` has had its tasks."""
        return self.cap > 0 and not any(self.allows(c) for c in clients)

    def released(self, reply: Reply) -> bool:
        """``reply`` is a message its client released: it carries an update (no error) and comes from
        a client this server sent a task to (late and after-the-end replies included)."""
        return reply.error is None and self.trips[reply.client] > 0

    def unread(self, read: Mapping[str, int]) -> list[str]:
        """Each client once for every task it was sent beyond the ``read`` messages charged to it:
        what the accountant still owes for the run to bound every message released."""
        return [c for c, n in sorted(self.trips.items()) for _ in range(max(0, n - read.get(c, 0)))]

    def refuse(self, clients: Sequence[str]) -> None:
        """Nobody could be sent a task: when the cap held one of ``clients`` back, the budget is what
        ran out (:class:`BudgetExhausted`, the run stops); otherwise return."""
        if self.cap > 0 and any(not self.allows(c) for c in clients):
            raise BudgetExhausted(
                f"no client with privacy budget left can train: each may be sent {self.cap} tasks, the "
                "releases its noise was calibrated for; the run stops here"
            )
