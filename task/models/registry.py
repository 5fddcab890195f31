"""Model registry: named factories ``(input_dim, num_classes, hidden) -> nn.Module`` with seeded init.

The architectures register themselves on import (:mod:`stamen.task.models` imports them all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ModelFactory = Callable[[int, int, Sequence[int]], nn.Module]

_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model factory ``(input_dim, num_classes, hidden) -> nn.Module`` under ``name``."""

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


@register_model("mlp")
def _mlp(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Fully connected ReLU network ``input_dim -> hidden... -> num_classes``."""
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model("logreg")
def _logreg(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Multinomial logistic regression (``hidden`` is ignored)."""
    del hidden
    return nn.Sequential(nn.Linear(input_dim, num_classes))


def create_model(
    name: str, input_dim: int, num_classes: int, hidden: Sequence[int], *, seed: int
) -> nn.Module:
    """Build a registered model with deterministic initial weights.

    Parameters
    ----------
    name : str
        Registered model name (see :func:`available_models`).
    input_dim, num_classes : int
        Feature count and number of classes, both >= 1.
    hidden : sequence of int
        Hidden layer widths (model specific).
    seed : int
        Seed for the initial weights; the global torch RNG is restored afterwards.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    if input_dim < 1 or num_classes < 1:
        raise ValueError(f"input_dim and num_classes must be >= 1, got {input_dim}, {num_classes}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _MODELS[name](input_dim, num_classes, tuple(hidden))
