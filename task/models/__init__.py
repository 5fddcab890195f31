"""The model factory: registered architectures, adapters, and the task's model.

Architectures: ``mlp``, ``logreg`` (:mod:`.registry`), ``cnn`` (:mod:`.cnn`), ``supermask_mlp``
(FRL, :mod:`.supermask`), ``bristle_transfer`` (:mod:`.bristle_transfer`), ``minilm`` and
``minilm-tiny`` (:mod:`.minilm`);
LoRA / LoRA-SB adapters (:mod:`.lora`) attach to any of them.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from stamen.task.models import bristle_transfer as _bristle_transfer  # noqa: F401  (registers it)
from stamen.task.models import cnn as _cnn  # noqa: F401  (registers cnn)
from stamen.task.models import minilm as _minilm  # noqa: F401  (registers minilm, minilm-tiny)
from stamen.task.models import supermask as _supermask  # noqa: F401  (registers supermask_mlp)
from stamen.task.models.lora import attach_adapters
from stamen.task.models.registry import ModelFactory, available_models, create_model, register_model
from stamen.task.spec import TaskSpec

__all__ = [
    "ModelFactory",
    "available_models",
    "build_model",
    "create_model",
    "model_structure",
    "register_model",
]


def build_model(task: TaskSpec, sample: tuple[np.ndarray, np.ndarray] | None = None) -> nn.Module:
    """The task's initial model, deterministic from ``task.seed``.

    ``sample`` (training ``(x, y)``) is needed by Fed-SB's data-driven adapter init
    (``lora.adapter = "fedsb"``) only; whoever builds the initial model provides it.
    """
    model = create_model(task.model, task.input_dim, task.num_classes, task.hidden, seed=task.seed)
    return attach_adapters(model, task.lora, seed=task.seed, sample=sample)


def model_structure(task: TaskSpec) -> nn.Module:
    """The task's architecture for a client that loads the server's weights into it right away
    (identical to :func:`build_model` except that Fed-SB's factors are not data-initialized)."""
    model = create_model(task.model, task.input_dim, task.num_classes, task.hidden, seed=task.seed)
    return attach_adapters(model, task.lora, seed=task.seed, structure_only=True)
