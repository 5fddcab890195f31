"""``full`` trainer: plain local SGD/Adam on all parameters (FedAvg's client update).

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS
2017, Algorithm 1 (ClientUpdate): E local epochs of minibatch SGD of size B from the global weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from stamen.client.models import get_weights
from stamen.client.state import ClientState
from stamen.client.task import TaskData, TrainSpec
from stamen.client.trainers.base import TrainResult, register_trainer


def make_optimizer(params: list[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimizer named by ``spec.optimizer`` with the spec's lr, momentum and weight decay."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def run_epochs(model: nn.Module, data: TaskData, spec: TrainSpec, seed: int) -> float:
    """Train ``model`` in place for ``spec.epochs`` epochs; return the mean training loss.

    Batches are drawn from a permutation seeded by ``seed`` (no DataLoader: its per-batch overhead
    dominates on the small partitions typical of FL simulations).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, spec)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    model.train()
    total, steps = 0.0, 0
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, spec.batch_size):
            idx = order[i : i + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
    return total / max(steps, 1)


def train_delta(
    model: nn.Module, data: TaskData, epochs: Callable[[], float]
) -> tuple[dict[str, np.ndarray], float]:
    """Run ``epochs()`` (which trains ``model`` in place and returns the mean loss) and return
    ``(delta = local - global, loss)``; an empty partition is a clear error. Shared by trainers."""
    if len(data.y) == 0:
        raise ValueError("client partition is empty: nothing to train on")
    start = get_weights(model)
    loss = epochs()
    end = get_weights(model)
    return {k: (end[k] - start[k]).astype(np.float32, copy=False) for k in start}, loss


class FullTrainer:
    """Train every parameter locally; the update is ``local - global`` for all tensors."""

    name = "full"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train in place and return ``delta = local - global`` (``state`` is not used)."""
        del state
        delta, loss = train_delta(model, data, lambda: run_epochs(model, data, spec, seed))
        return TrainResult(delta=delta, num_examples=len(data.y), metrics={"train-loss": loss})


register_trainer("full")(FullTrainer)
