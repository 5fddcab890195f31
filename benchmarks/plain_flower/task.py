"""The plain app's model, data and local training (what a Flower user keeps in ``task.py``).

The data is the engine benchmark's: mnist1d (``50 x clients`` samples, at least 4,000; 20 % test),
Dirichlet(alpha) label skew over ``clients`` partitions, read through stamen's provider so that the
partitions are identical to the ones stamen's engines train on. Everything else is plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stamen.simulations.provider import DataSpec, client_data, test_data


@dataclass(frozen=True)
class PlainSettings:
    """The benchmark scenario, as the plain app sees it.

    Parameters
    ----------
    clients : int, default 1000
        Virtual SuperNodes, one partition each.
    per_round : int, default 100
        Clients sampled per round (``FedAvg(fraction_train=per_round / clients)``).
    rounds : int, default 3
        Server rounds.
    local_epochs : int, default 2
        Local epochs per client.
    batch_size : int, default 16
        Local minibatch size.
    lr : float, default 0.2
        Local SGD learning rate (the ``smoke`` scenario's, which the engine benchmark keeps).
    alpha : float, default 0.5
        Dirichlet concentration of the label skew.
    hidden : int, default 64
        Width of the MLP's hidden layer.
    seed : int, default 0
        Data, partition and initial-model seed.
    """

    clients: int = 1000
    per_round: int = 100
    rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.2
    alpha: float = 0.5
    hidden: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.per_round <= self.clients:
            raise ValueError(f"per_round must be in [1, clients={self.clients}], got {self.per_round}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


def data_spec(clients: int, alpha: float = 0.5, seed: int = 0) -> DataSpec:
    """The benchmark's data: mnist1d, ``max(50 * clients, 4000)`` samples, Dirichlet(``alpha``)."""
    return DataSpec(
        dataset="mnist1d",
        num_samples=max(50 * clients, 4000),
        partition="dirichlet",
        alpha=alpha,
        num_clients=clients,
        seed=seed,
    )


def make_model(hidden: int = 64) -> nn.Module:
    """MLP 40-``hidden``-10 with ReLU (the same layers as stamen's ``mlp`` model)."""
    return nn.Sequential(nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@lru_cache(maxsize=4)
def _spec(clients: int, alpha: float, seed: int) -> DataSpec:
    return data_spec(clients, alpha, seed)


def load_partition(partition_id: int, clients: int, alpha: float = 0.5, seed: int = 0) -> TensorDataset:
    """Client ``partition_id``'s training data as a ``TensorDataset`` of (float32 x, int64 y)."""
    data = client_data(_spec(clients, alpha, seed), partition_id)
    return TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y).long())


def train(model: nn.Module, data: TensorDataset, epochs: int, batch_size: int, lr: float) -> float:
    """Plain local training: ``epochs`` of shuffled minibatch SGD; returns the mean loss."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


def test_accuracy(model: nn.Module, clients: int, alpha: float = 0.5, seed: int = 0) -> float:
    """Accuracy of ``model`` on the benchmark's held-out test split, in [0, 1]."""
    data = test_data(_spec(clients, alpha, seed))
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x)).argmax(dim=1).numpy()
    return float(np.mean(pred == data.y))
