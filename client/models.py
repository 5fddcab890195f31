"""Model registry and weight helpers shared by clients, the server's evaluation and the engines.

Weights cross module boundaries as ``dict[str, np.ndarray]`` (float32, ``state_dict`` order and
names), never as torch tensors, so that ``stamen.protocols`` stays numpy-only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

Weights = dict[str, np.ndarray]
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


def get_weights(model: nn.Module) -> Weights:
    """Copy the model's ``state_dict`` into float32 numpy arrays (state_dict order)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load ``weights`` into ``model`` in place; names and shapes must match exactly."""
    state = model.state_dict()
    if set(state) != set(weights):
        missing, extra = set(state) - set(weights), set(weights) - set(state)
        raise ValueError(f"weight names differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
    with torch.no_grad():
        for name, tensor in state.items():
            src = np.asarray(weights[name])
            if tuple(src.shape) != tuple(tensor.shape):
                raise ValueError(f"shape of {name!r}: expected {tuple(tensor.shape)}, got {src.shape}")
            tensor.copy_(torch.tensor(np.asarray(src, dtype=np.float32)))  # copy: src may be read-only or 0-d


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)``.

    Returns ``(nan, nan)`` for an empty set.
    """
    n = len(y)
    if n == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, n, batch_size):
        xb = torch.tensor(x[i : i + batch_size])  # copy: cached datasets are read-only
        yb = torch.tensor(y[i : i + batch_size])
        logits = model(xb)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / n, correct / n


from stamen.client import bristle_model as _bristle_model  # noqa: E402,F401  (registers bristle_transfer)
from stamen.client import minilm as _minilm  # noqa: E402,F401  (registers minilm, minilm-tiny)
from stamen.client import supermask as _supermask  # noqa: E402,F401  (registers supermask_mlp)
