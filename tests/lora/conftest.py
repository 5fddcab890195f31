"""Fixtures for the LoRA / Fed-SB / sparse tests: the tiny transformer and synthetic token data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from stamen.task.data import TaskData
from stamen.task.models import create_model
from stamen.task.models import minilm as _minilm  # noqa: F401  (registers minilm, minilm-tiny)
from stamen.task.models.lora import attach_adapters
from stamen.task.settings import LoRAConfig

SEQ, CLASSES = 12, 3


def token_data(n: int, seed: int) -> TaskData:
    """Class c sentences use token ids from a class-specific range; random lengths, padded with 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = np.zeros((n, SEQ), dtype=np.int64)
    for i in range(n):
        length = int(rng.integers(4, SEQ + 1))
        x[i, 0], x[i, length - 1] = 101, 102
        x[i, 1 : length - 1] = rng.integers(2000 + 100 * y[i], 2100 + 100 * y[i], size=length - 2)
    return TaskData(x, y.astype(np.int64), CLASSES, SEQ)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def data() -> TaskData:
    return token_data(48, seed=0)


@pytest.fixture
def make_data() -> Callable[[int, int], TaskData]:
    """``make_data(n, seed)``: synthetic token data (see :func:`token_data`)."""
    return lambda n, seed: token_data(n, seed)


@pytest.fixture
def tiny() -> Callable[..., nn.Module]:
    """``tiny(kind="none", **adapter_fields)``: the tiny transformer, optionally with adapters."""

    def make(kind: str = "none", seed: int = 0, **fields: object) -> nn.Module:
        model = create_model("minilm-tiny", SEQ, CLASSES, (), seed=seed)
        if kind == "none":
            return model
        sample = token_data(40, seed=123)
        cfg = LoRAConfig(adapter=kind, **fields)
        return attach_adapters(model, cfg, seed=seed, sample=(sample.x, sample.y))

    return make
