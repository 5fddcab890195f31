"""The simulation's hooks into the round driver: the adversary (sampling, update attacks) and the
clients' timing (the staleness paper's class delay)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stamen.server.aggregators.base import RoundContext
from stamen.server.driver.collect import CollectedUpdates
from stamen.simulations.adversary import Adversary
from stamen.simulations.provider import DataSpec, client_data, dataset, partitions
from stamen.simulations.timing import ClientTiming, TimingConfig, clients_holding_class


def client_timing(config: TimingConfig, data: DataSpec) -> ClientTiming:
    """The run's timing model; with ``delay_mode = "class"`` the clients whose data is mostly
    ``delayed_class`` are the delayed ones."""
    delayed: frozenset[int] = frozenset()
    if config.delay_mode == "class":
        delayed = delayed_by_class(data, config.delayed_class, config.delayed_min_share)
    return ClientTiming(config, data.num_clients, seed=data.seed, delayed_clients=delayed)


def delayed_by_class(data: DataSpec, cls: int, min_share: float, chunk: int = 4096) -> frozenset[int]:
    """:func:`~stamen.simulations.timing.clients_holding_class` over every client of ``data``,
    ``chunk`` clients' index rows at a time (no per-client array is kept: 100,000 pooled clients
    take seconds); a malicious client's (possibly poisoned) labels are its own."""
    ds, parts = dataset(data), partitions(data)
    held: set[int] = set()
    for lo in range(0, data.num_clients, chunk):
        rows, sizes = parts.rows(np.arange(lo, min(lo + chunk, data.num_clients)))  # (c, w), (c,)
        valid = np.arange(rows.shape[1])[None, :] < sizes[:, None]  # padding masked
        hits = ((ds.y_train[rows] == cls) & valid).sum(axis=1)
        share = hits / np.maximum(sizes, 1)  # == np.mean(labels == cls) for a non-empty client
        held.update(int(lo + i) for i in np.flatnonzero((sizes > 0) & (share >= min_share)))
    if data.data_attack != "none":
        bad = [client_data(data, pid).y for pid in data.malicious]
        held.difference_update(data.malicious)
        held.update(data.malicious[i] for i in clients_holding_class(bad, cls, min_share))
    return frozenset(held)


@dataclass
class SimulationHooks:
    """:class:`~stamen.server.driver.RoundHooks` of a simulation."""

    adversary: Adversary | None = None
    timing: ClientTiming | None = None

    def sample(self, rnd: int, clients: Sequence[str], k: int) -> list[str] | None:
        """The adversary's sampler (FRL's malicious minority), else the driver's uniform draw."""
        return self.adversary.sample(rnd, clients, k) if self.adversary is not None else None

    def tamper(self, rnd: int, updates: CollectedUpdates, ctx: RoundContext) -> None:
        """The adversary's update attack."""
        if self.adversary is not None:
            self.adversary.tamper(rnd, updates, ctx)

    def delay(self, rnd: int, client: str) -> int:
        """Rounds ``client`` is delayed (the class-delay setting), else 0."""
        del rnd
        if self.timing is None:
            return 0
        return self.timing.round_delay(int(client.rpartition("-")[2]))
