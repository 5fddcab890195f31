"""The simulation's virtual clients as :class:`~stamen.client.node.Node` objects: each gets its
partition (poisoned for a malicious client under a data attack), its local test slice in Bristle's
peer mode, and its edge store in the edge runtime. The ClientApp of the Flower engine resolves its
node from ``context.node_config["partition-id"]`` with :meth:`SimulatedNodes.resolve`."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
from flwr.app import Context

from stamen.client.node import Node
from stamen.protocols import keys
from stamen.simulations.bristle_data import validation_inputs
from stamen.simulations.devices import DeviceFleet
from stamen.simulations.provider import DataSpec, client_data
from stamen.task.data import TaskData


@dataclass(frozen=True)
class PartitionSource:
    """Virtual client ``pid``'s :class:`~stamen.task.data.DataSource` (loaded on first use)."""

    spec: DataSpec
    pid: int
    peer_slice: bool = False  # Bristle's peer mode: the node's 10 test samples per familiar class

    def train(self) -> TaskData:
        """The client's partition."""
        return client_data(self.spec, self.pid)

    def test(self) -> TaskData | None:
        """Bristle's local test slice (peer mode), else None."""
        if not self.peer_slice:
            return None
        train = self.train()
        classes = tuple(int(c) for c in np.unique(train.y))
        x, y = validation_inputs(self.spec.seed, classes, node=self.pid)
        return TaskData(x, y, train.num_classes, int(x.shape[1]))


@dataclass
class SimulatedNodes:
    """Every virtual client of a run (what each would hold on its own device)."""

    data: DataSpec
    peer: bool = False
    devices: DeviceFleet | None = None
    _cache: dict[int, Node] = field(default_factory=dict, repr=False, compare=False)

    def node(self, pid: int) -> Node:
        """Virtual client ``pid`` (built once per process)."""
        if pid not in self._cache:
            store = self.devices.store(pid) if self.devices is not None else None
            self._cache[pid] = Node(PartitionSource(self.data, pid, self.peer), f"client-{pid}", pid, store)
        return self._cache[pid]

    def resolve(self, context: Context) -> Node:
        """The node behind a Flower context (its ``partition-id``)."""
        if keys.NODE_PARTITION_ID not in context.node_config:
            raise ValueError("a simulated node needs 'partition-id' in its node config")
        return self.node(int(context.node_config[keys.NODE_PARTITION_ID]))


class ClientNames(Sequence[str]):
    """``["client-0", ..., "client-<n-1>"]`` without storing them: a name is made when indexed, so
    a million virtual clients cost nothing here (a list of their names would be ~70 MB)."""

    def __init__(self, n: int, prefix: str = "client-") -> None:
        if n < 0:
            raise ValueError(f"the number of clients must be >= 0, got {n}")
        self.n, self.prefix = n, prefix

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [f"{self.prefix}{k}" for k in range(*i.indices(self.n))]
        k = operator.index(i)
        if not -self.n <= k < self.n:
            raise IndexError(f"client index {k} out of range for {self.n} clients")
        return f"{self.prefix}{k % self.n}"

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name.startswith(self.prefix):
            return False
        digits = name[len(self.prefix) :]
        return digits.isdigit() and str(int(digits)) == digits and int(digits) < self.n

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClientNames):
            return (self.n, self.prefix) == (other.n, other.prefix)
        return isinstance(other, list) and other == list(self)

    __hash__ = None  # type: ignore[assignment]
