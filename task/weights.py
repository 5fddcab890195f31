"""Weights as numpy: copy a model's ``state_dict`` out, load it back, evaluate.

Weights cross module boundaries as ``dict[str, np.ndarray]`` (float32, ``state_dict`` order and
names), never as torch tensors, so that ``stamen.protocols`` stays numpy-only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

Weights = dict[str, np.ndarray]


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
