"""The simulation's hooks into the round driver: the adversary (sampling, update attacks) and the
clients' timing (the staleness paper's class delay)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stamen.server.aggregators.base import RoundContext
from stamen.server.driver.collect import CollectedUpdates
from stamen.simulations.adversary import Adversary
from stamen.simulations.provider import DataSpec, client_data
from stamen.simulations.timing import ClientTiming, TimingConfig, clients_holding_class


def client_timing(config: TimingConfig, data: DataSpec) -> ClientTiming:
    """The run's timing model; with ``delay_mode = "class"`` the clients whose data is mostly
    ``delayed_class`` are the delayed ones."""
    delayed: frozenset[int] = frozenset()
    if config.delay_mode == "class":
        labels = [np.asarray(client_data(data, pid).y) for pid in range(data.num_clients)]
        delayed = clients_holding_class(labels, config.delayed_class, config.delayed_min_share)
    return ClientTiming(config, data.num_clients, seed=data.seed, delayed_clients=delayed)


@dataclass
class SimulationHooks:
    """:class:`~stamen.server.driver.RoundHooks` of a simulation."""

    adversary: Adversary | None = None
    timing: ClientTiming | None = None

    def sample(self, rnd: int, clients: list[str], k: int) -> list[str] | None:
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
