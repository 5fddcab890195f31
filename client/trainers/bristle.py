"""``bristle`` trainer: train the output layer; send only the rows of the client's own classes.

Verbraeken et al., "Bristle", arXiv 2110.11006; ``Node.kt`` of jverbraeken/trustchain-superapp
@ a505112b: a node trains its whole output layer on its data (``fitNetwork``; DL4J Adam lr 1e-3,
L2 5e-3, i.e. ``optimizer = "adam"``, ``lr = 1e-3``, ``weight_decay = 5e-3`` here), then copies
into the layer it shares only the columns (our rows) of the classes it holds (``updateCW``).
So the update is ``local - global`` on the rows of the classes present in the client's data and
exactly 0 on the others; the server-mode ``bristle`` rule reads the number of changed rows as the
client's class count. Frozen tensors (none in ``bristle_transfer``'s state dict) stay 0.

Deviation: the code fits one mini-batch per iteration; this trainer runs ``spec.epochs`` epochs
over the partition (the engine's notion of a round).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult, register_trainer
from stamen.client.trainers.full import run_epochs, train_delta
from stamen.protocols import keys
from stamen.task.data import TaskData
from stamen.task.spec import TrainSpec


def own_class_rows(delta: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``delta`` (C, F) with every row not in ``classes`` set to 0 (``updateCW``)."""
    out = np.zeros_like(delta)
    out[classes] = delta[classes]
    return out


class BristleTrainer:
    """Train the trainable tensors; keep the output-layer update on the client's classes only."""

    name = "bristle"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train in place; return ``local - global`` restricted to the client's classes."""
        del state
        raw, loss = train_delta(model, data, lambda: run_epochs(model, data, spec, seed))
        classes = np.unique(data.y)
        delta = {}
        for name, d in raw.items():
            if d.ndim == 2 and d.shape[0] == data.num_classes:  # an output layer: (C, F)
                d = own_class_rows(d, classes)
            delta[name] = d
        return TrainResult(delta=delta, num_examples=len(data.y), metrics={keys.TRAIN_LOSS: loss})


register_trainer("bristle")(BristleTrainer)
