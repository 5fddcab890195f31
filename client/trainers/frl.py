"""``frl`` trainer: train the supermask scores only and send, per layer, the ranking of the edges.

Mozaffari et al., "Every Vote Counts: Ranking-Based Training of Federated Learning to Resist
Poisoning Attacks", USENIX Security 2023 (arXiv 2110.04350), Algorithm 1, client side; ported from
``FL_train.py::FRL_train`` and ``utils.py::Find_rank`` of SPIN-UMass/FRL @ 4cf2550:

- a fresh SGD optimiser per client and round over the trainable parameters (the scores):
  ``lr`` (code: 0.4), momentum (0.9) and weight decay (1e-4) from the :class:`TrainSpec`;
- ``CosineAnnealingLR(T_max = epochs)`` stepped once per local epoch, so epoch ``e`` uses
  ``lr * (1 + cos(pi * e / epochs)) / 2``;
- after training, for every ``*.scores`` tensor: ``ranking = argsort(scores.flatten())``
  (ascending signed score; last index = highest score).

**Exception to the sign convention.** The "delta" this trainer returns is not ``local - global``:
for each ``*.scores`` tensor it is the client's ranking as float32 edge indices (shape of the
tensor, C order), and zeros for every other (frozen) tensor. The ``frl`` aggregation rule and the
``frl_rank`` codec read it that way. float32 holds every index exactly up to ``2**24`` edges per
layer; larger layers are refused.

Deviation: the code also decays the learning rate per round, ``lr * 0.999**round``; the trainer
does not see the round number, so the engine must pass the decayed ``lr`` in the spec.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult, register_trainer
from stamen.protocols import keys
from stamen.task.data import TaskData
from stamen.task.models.supermask import edge_ranking, is_score_tensor
from stamen.task.spec import TrainSpec

MAX_EDGES = 2**24  # largest layer whose indices float32 represents exactly


def cosine_epoch_lr(lr: float, epoch: int, epochs: int) -> float:
    """``CosineAnnealingLR`` with ``eta_min = 0`` and ``T_max = epochs`` at epoch ``epoch`` (0-based)."""
    return lr * (1.0 + np.cos(np.pi * epoch / epochs)) / 2.0


def train_scores(model: nn.Module, data: TaskData, spec: TrainSpec, seed: int) -> float:
    """SGD with momentum on the trainable tensors, cosine lr per epoch; mean training loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("frl trainer: the model has no trainable score tensors")
    opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    total, steps = 0.0, 0
    for epoch in range(spec.epochs):
        for group in opt.param_groups:
            group["lr"] = cosine_epoch_lr(spec.lr, epoch, spec.epochs)
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
    return total / max(steps, 1)


def ranking_update(model: nn.Module) -> dict[str, np.ndarray]:
    """Per state-dict tensor: the edge ranking (float32, tensor shape) for scores, else zeros."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        if is_score_tensor(name):
            if tensor.numel() > MAX_EDGES:
                raise ValueError(f"frl: {name} has {tensor.numel()} edges; at most 2**24 fit float32")
            out[name] = edge_ranking(tensor).astype(np.float32).reshape(tuple(tensor.shape))
        else:
            out[name] = np.zeros(tuple(tensor.shape), dtype=np.float32)
    return out


class FRLTrainer:
    """Train the scores of a supermask model; return per-layer rankings (see module docstring)."""

    name = "frl"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train in place and return the rankings as the update (``state`` is not used)."""
        del state
        if len(data.y) == 0:
            raise ValueError("client partition is empty: nothing to train on")
        if spec.optimizer != "sgd":
            raise ValueError(f"frl trainer uses SGD (as the official code); got optimizer={spec.optimizer!r}")
        if not any(is_score_tensor(n) for n in model.state_dict()):
            raise ValueError("frl trainer needs a supermask model (e.g. model.name = 'supermask_mlp')")
        loss = train_scores(model, data, spec, seed)
        update = ranking_update(model)
        return TrainResult(delta=update, num_examples=len(data.y), metrics={keys.TRAIN_LOSS: loss})


register_trainer("frl")(FRLTrainer)
