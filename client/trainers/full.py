"""``full`` trainer: plain local SGD/Adam on all parameters (FedAvg's client update).

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS
2017, Algorithm 1 (ClientUpdate): E local epochs of minibatch SGD of size B from the global weights.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import torch
from torch import nn

from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult, register_trainer
from stamen.client.trainers.optim import local_optimizer
from stamen.protocols import keys
from stamen.task.data import TaskData
from stamen.task.models.lora import trainable_names
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights


def make_optimizer(params: list[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer named by ``spec.optimizer`` with the spec's lr, momentum and
    weight decay: for DP-SGD, whose opacus engine wraps a real one (the other trainers use
    :func:`~stamen.client.trainers.optim.local_optimizer`, the same steps)."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def run_epochs(model: nn.Module, data: TaskData, spec: TrainSpec, seed: int) -> float:
    """Train ``model`` in place for ``spec.epochs`` epochs; return the mean training loss.

    Batches are drawn from a permutation seeded by ``seed`` (no DataLoader: its per-batch overhead
    dominates on the small partitions typical of FL simulations).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = local_optimizer(params, spec)
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
    model: nn.Module,
    data: TaskData,
    epochs: Callable[[], float],
    trained: Collection[str] | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Run ``epochs()`` (which trains ``model`` in place and returns the mean loss) and return
    ``(delta = local - global, loss)``; an empty partition is a clear error. Shared by trainers.

    With ``trained`` (the parameters the trainer can move) only those and the buffers are
    snapshotted; every other delta is an untouched ``np.zeros`` (exact: a parameter without
    gradient does not change). For LoRA on MiniLM this saves two copies of the frozen 86 MB model.
    """
    if len(data.y) == 0:
        raise ValueError("client partition is empty: nothing to train on")
    keep = None if trained is None else {*trained, *(n for n, _ in model.named_buffers())}
    start = _snapshot(model, keep)
    loss = epochs()
    end = _snapshot(model, keep)
    delta = {
        k: (end[k] - start[k]).astype(np.float32, copy=False)
        if k in start
        else np.zeros(tuple(v.shape), dtype=np.float32)
        for k, v in model.state_dict().items()
    }
    return delta, loss


def _snapshot(model: nn.Module, names: set[str] | None) -> dict[str, np.ndarray]:
    """float32 copies of the ``state_dict`` entries in ``names`` (all if ``None``)."""
    if names is None:
        return get_weights(model)
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in model.state_dict().items()
        if k in names
    }


class FullTrainer:
    """Train every parameter locally; the update is ``local - global`` for all tensors."""

    name = "full"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train in place and return ``delta = local - global`` (``state`` is not used)."""
        del state
        trained = tuple(trainable_names(model))
        delta, loss = train_delta(model, data, lambda: run_epochs(model, data, spec, seed), trained)
        return TrainResult(
            delta=delta, num_examples=len(data.y), metrics={keys.TRAIN_LOSS: loss}, trained=trained
        )


register_trainer("full")(FullTrainer)
