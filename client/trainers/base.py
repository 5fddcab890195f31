"""The local-trainer interface and its registry.

A trainer takes the global model (already loaded into ``model``), the client's data and the round's
instructions, trains, and returns the update as ``delta = local - global`` (the sign convention is
fixed once here and pinned by a test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import nn

from stamen.client.state import ClientState
from stamen.task.data import TaskData
from stamen.task.spec import TrainSpec


@dataclass(frozen=True)
class TrainResult:
    """What local training produced.

    Attributes
    ----------
    delta : dict[str, np.ndarray]
        float32 update per tensor, ``local - global``, same names/shapes as the model.
    num_examples : int
        Training samples used (FedAvg weight).
    metrics : dict[str, float]
        E.g. ``{"train-loss": ...}``.
    trained : tuple of str or None
        Names of the tensors the trainer may have changed, fixed by the model's structure and the
        trainer's configuration, never by the data; every other tensor of ``delta`` is exactly zero.
        Local DP clips and noises only these (what a sparse codec then sends). ``None``: any tensor
        may be non-zero (all are noised).
    """

    delta: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    trained: tuple[str, ...] | None = None


class LocalTrainer(Protocol):
    """``train(model, data, spec, seed, state) -> TrainResult``.

    A trainer keeps nothing on ``self`` across calls; what must survive rounds (e.g. a DP-SGD step
    count) goes into ``state``, which the engine persists per client.
    """

    name: str

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train ``model`` in place on ``data`` and return the update."""
        ...


_TRAINERS: dict[str, Callable[[], LocalTrainer]] = {}


def register_trainer(name: str) -> Callable[[Callable[[], LocalTrainer]], Callable[[], LocalTrainer]]:
    """Register a trainer factory under ``name`` (duplicates raise ``ValueError``)."""

    def deco(factory: Callable[[], LocalTrainer]) -> Callable[[], LocalTrainer]:
        if name in _TRAINERS:
            raise ValueError(f"trainer {name!r} is already registered")
        _TRAINERS[name] = factory
        return factory

    return deco


def create_trainer(name: str) -> LocalTrainer:
    """Instantiate the trainer registered as ``name``."""
    if name not in _TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; available: {', '.join(sorted(_TRAINERS))}")
    return _TRAINERS[name]()


def available_trainers() -> list[str]:
    """Registered trainer names, sorted."""
    return sorted(_TRAINERS)
