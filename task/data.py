"""Training data as a node sees it, and where a node gets it from.

A deployed device reads its own data (:func:`stamen.task.datasource.load_data_source`: an ``.npz``
file or directory, or an importable entry point named in its node config); a simulation injects each
virtual client's partition. Neither ever arrives in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TaskData:
    """Arrays of one client's local data (or a test split)."""

    x: np.ndarray  # (n, features) float32, or (n, seq_len) int64 token ids
    y: np.ndarray  # (n,) int64
    num_classes: int
    input_dim: int


class DataSource(Protocol):
    """What a node trains and evaluates on.

    ``train()`` is the local training set; ``test()`` a small local held-out set or ``None`` (Bristle's
    peer mode integrates with it; federated evaluation falls back to ``train()`` without one).
    """

    def train(self) -> TaskData:
        """The local training data."""
        ...

    def test(self) -> TaskData | None:
        """A local held-out set, if the node has one."""
        ...


@dataclass(frozen=True)
class ArraySource:
    """A :class:`DataSource` over arrays already in memory."""

    train_data: TaskData
    test_data: TaskData | None = None

    def train(self) -> TaskData:
        """The local training data."""
        return self.train_data

    def test(self) -> TaskData | None:
        """The local held-out set (or None)."""
        return self.test_data
