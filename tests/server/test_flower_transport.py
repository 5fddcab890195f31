"""GridTransport over a fake Grid: replies map to the node that was asked, errors included."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from stamen.protocols import model_hash
from stamen.server.driver.flower_transport import GridTransport
from stamen.server.driver.types import TrainTask
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

SUPERLINK = 1  # the node id Flower's SuperLink writes its own messages from
BASE = {"w": np.zeros(3, np.float32)}
INSTR = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())


def _error(src: int, reply_to: str, reason: str) -> Any:
    meta = SimpleNamespace(src_node_id=src, reply_to_message_id=reply_to)
    return SimpleNamespace(metadata=meta, has_error=lambda: True, error=SimpleNamespace(reason=reason))


class FakeGrid:
    """Nodes 7 and 9; node 9 went away, so the SuperLink answers its message itself."""

    def get_node_ids(self) -> list[int]:
        return [7, 9]

    def get_nodes(self) -> list[Any]:
        return []

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        out = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"  # what push_messages does
            src = msg.metadata.dst_node_id if msg.metadata.dst_node_id == 7 else SUPERLINK
            out.append(_error(src, f"m{i}", f"reply of {msg.metadata.dst_node_id}"))
        return out


@pytest.fixture
def run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)  # a Message needs its run and node, as in a ServerApp
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def _tasks(clients: Sequence[str]) -> list[TrainTask]:
    return [TrainTask(c, INSTR, BASE, None, model_hash(BASE)) for c in clients]


def test_superlink_error_replies_belong_to_the_node_that_was_asked(run_id: None) -> None:
    transport = GridTransport(FakeGrid(), wanted=2, minimum=2, wait_s=0.0)
    assert transport.clients() == ["node-7", "node-9"]
    replies = transport.train(_tasks(["node-7", "node-9"]), timeout=1.0)
    assert [(r.client, r.error) for r in replies] == [
        ("node-7", "reply of 7"),
        ("node-9", "reply of 9"),  # not "node-1": the SuperLink wrote it for node 9
    ]


class CountingGrid(FakeGrid):
    """Counts the messages sent (a names query would be one per node)."""

    def __init__(self) -> None:
        self.sent = 0

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        self.sent += len(list(messages))
        return []


def test_known_names_replace_the_query() -> None:
    """With ``names`` the nodes are named without one message; ordered by the client number."""
    grid = CountingGrid()
    transport = GridTransport(
        grid, 2, 2, 0.0, query_names=True, names=lambda nodes: {7: "client-10", 9: "client-2"}
    )
    assert transport.clients() == ["client-2", "client-10"]
    assert (transport.node_of("client-10"), grid.sent) == (7, 0)


def test_names_none_falls_back_to_the_query(run_id: None) -> None:
    """``names`` returning ``None`` (mapping not recorded) asks every node once instead."""
    grid = CountingGrid()
    transport = GridTransport(grid, 2, 2, 0.0, query_names=True, names=lambda nodes: None)
    assert transport.clients() == []  # the fake grid answers no query
    assert grid.sent == 2
