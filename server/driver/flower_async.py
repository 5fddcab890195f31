"""The asynchronous driver's transport over Flower's ``Grid``: ``push_messages`` one task at a
time, ``pull_messages`` what has arrived (no round barrier; flower-1.41.md §3).

Each reply is matched to its task by the message it answers (``reply_to_message_id``) — the
server's own record of whom it asked and with which model version — and must come from the node
the task was sent to. The reply names that task (``Reply.task``), so the driver tells a late reply to
a task it gave up at the timeout (still polled for: the SuperLink answers an expired message with an
error of its own) from the fresh task its node may have been sent since.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, Message, MessageType

from stamen.server.driver.flower_transport import GridTransport, arrays_of_tasks, content_of, reply_of
from stamen.server.driver.types import Reply, TrainTask

POLL_S = 0.1  # how often pull asks the SuperLink for replies
NODE_POLL_S = 1.0  # how often a server with no node connected asks for one


class GridAsyncTransport:
    """Push/pull over the grid of ``nodes`` (a :class:`GridTransport`: node discovery and keys)."""

    def __init__(self, nodes: GridTransport, ttl_s: float) -> None:
        self.nodes, self.ttl_s = nodes, ttl_s
        self.pending: dict[str, TrainTask] = {}  # message id -> task
        self._arrays: tuple[tuple[int, int], ArrayRecord | None] | None = None
        self.arrivals: list[str] = []  # client keys in arrival order (for replay in tests)

    def clients(self) -> list[str]:
        """The connected clients."""
        return self.nodes.clients()

    def ready(self, client: str) -> bool:
        """A connected node can take a task."""
        del client
        return True

    def now(self) -> float:
        """A deployment has no simulated clock."""
        return math.nan

    def wait_ready(self, eligible: Callable[[str], bool] | None = None) -> bool:
        """No node is connected (none has a task): wait for one, asking the SuperLink every
        ``NODE_POLL_S`` for at most the reply timeout ``ttl_s`` (``eligible`` is not consulted: a
        connected node's availability is not known ahead)."""
        deadline = time.monotonic() + self.ttl_s
        while not self.nodes.clients():
            if time.monotonic() >= deadline:
                return False
            time.sleep(NODE_POLL_S)
        return True

    def advance_to_window(self, eligible: Callable[[str], bool] | None = None) -> bool:
        """A connected node is ready at once: no window to wait for (wall time, no virtual clock)."""
        del eligible
        return False

    def push(self, task: TrainTask) -> None:
        """Send ``task`` to its node."""
        node = self.nodes.node_of(task.client)
        msg = Message(
            content_of(task, self._model(task)),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            ttl=self.ttl_s,
        )
        (msg_id,) = list(self.nodes.grid.push_messages([msg]))
        self.pending[msg_id] = task

    def pull(self, timeout: float) -> list[Reply]:
        """The replies that arrived within ``timeout`` seconds (polling the SuperLink)."""
        deadline = time.monotonic() + timeout
        while self.pending:
            replies = list(self.nodes.grid.pull_messages(list(self.pending)))
            if replies:
                return [self._reply(m) for m in replies]
            if time.monotonic() >= deadline:
                return []
            time.sleep(POLL_S)
        return []

    def _reply(self, msg: Message) -> Reply:
        """The reply to the task of the message ``msg`` answers (an error the SuperLink wrote itself,
        e.g. for an expired message, is that task's, as :class:`GridTransport` reads it)."""
        task = self.pending.pop(msg.metadata.reply_to_message_id)
        self.arrivals.append(task.client)
        if msg.has_error():
            reply = Reply(task.client, error=str(msg.error.reason))
        elif msg.metadata.src_node_id != self.nodes.node_of(task.client):
            reply = Reply(task.client, error=f"the reply came from node {msg.metadata.src_node_id}")
        else:
            reply = self.nodes.bind(msg.metadata.src_node_id, reply_of(task.client, msg.content), msg.content)
        reply.task = task
        return reply

    def _model(self, task: TrainTask) -> ArrayRecord | None:
        """The task's model as an ArrayRecord, built once per model version."""
        key = (task.instructions.version, id(task.weights))
        if self._arrays is None or self._arrays[0] != key:
            self._arrays = (key, arrays_of_tasks([task]))
        return self._arrays[1]
