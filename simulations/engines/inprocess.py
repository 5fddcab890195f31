"""``inprocess`` engine: the whole federation in one process, no per-client process or message.

pfl-research style: one model object reused by every client, the round's update stack preallocated
by the driver's collector, data partitions cached. The transport calls the client round
(:func:`stamen.client.node.client_round`: the same trainer, DP and codec code as the ClientApp, real
packed envelopes whose ``len()`` is counted) and hands the bytes to the same round driver the
Flower apps use. Only the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from stamen.client.node import Received, client_round
from stamen.client.state import ClientState
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.history import FederationResult, ProgressFn
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.plan import SimulationPlan
from stamen.task.bristle.peer import PeerConfig
from stamen.task.bristle.relayed import Relayed
from stamen.task.models import model_structure

ClientProgressFn = Callable[[int, int], None]  # (clients done, clients in round)


class InProcessTransport:
    """Runs every task's client round right here, in cohort order."""

    def __init__(
        self,
        nodes: SimulatedNodes,
        num_clients: int,
        model: torch.nn.Module,
        progress: ClientProgressFn | None = None,
    ) -> None:
        self.nodes, self.model, self.progress = nodes, model, progress
        self._clients = [f"client-{i}" for i in range(num_clients)]
        self.states: dict[int, ClientState] = {}  # per-client memory across rounds

    def clients(self) -> list[str]:
        """Every virtual client, by partition id."""
        return self._clients

    def train(self, tasks: Sequence[TrainTask], timeout: float) -> list[Reply]:
        """Each client's round, one after the other (``timeout`` does not apply in one process)."""
        del timeout
        replies = []
        for i, task in enumerate(tasks):
            replies.append(self.run(task))
            if self.progress is not None:
                self.progress(i + 1, len(tasks))
        return replies

    def run(self, task: TrainTask) -> Reply:
        """One client's round (an exception in client code propagates: a simulation bug is loud)."""
        pid = int(task.client.rpartition("-")[2])
        node, state = self.nodes.node(pid), self.states.setdefault(pid, ClientState())
        relayed, peer = task.extra.get("relayed"), task.extra.get("peer")
        received = Received(
            task.instructions,
            task.weights,
            task.downlink,
            relayed if isinstance(relayed, Relayed) else None,
            peer if isinstance(peer, PeerConfig) else None,
            base_hash=task.expected_base if task.weights is not None else None,
        )
        payload, metrics = client_round(node, received, self.model, state)
        return Reply(task.client, envelope=payload, metrics=dict(metrics), nbytes=len(payload))


def run_inprocess(
    plan: SimulationPlan, progress: ProgressFn | None = None, client_progress: ClientProgressFn | None = None
) -> FederationResult:
    """Run the planned rounds in this process and return the per-round records."""
    torch.set_num_threads(1)  # same numerics as one-thread Flower clients
    devices = plan.devices()
    try:
        model = model_structure(plan.cfg.task)
        transport = InProcessTransport(plan.nodes(devices), plan.cfg.num_clients, model, client_progress)
        result = plan.driver(transport, devices).run(plan.initial, progress)
    finally:
        if devices is not None:
            devices.close()
    result.extra.update(plan.result_extra())
    return result
