"""Helpers shared by the edge tests (imported as a plain module; conftest puts this folder on
sys.path)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from stamen.edge.arch import build_model

TINY_CNN = {
    "name": "cnn",
    "input_shape": [1, 4, 4],
    "channels": [3, 4],
    "strides": [1, 2],
    "hidden": [5],
    "classes": 3,
}


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store (except the lock), for untouched-store assertions."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def torch_outputs(arch: Mapping, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Reference logits of the PyTorch model with ``weights``."""
    model = build_model(dict(arch))
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()})
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def perturbed(weights: Mapping[str, np.ndarray], seed: int, scale: float = 0.05) -> dict[str, np.ndarray]:
    """``weights`` plus seeded Gaussian noise (a stand-in for a trained next version)."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, scale, v.shape)).astype(np.float32) for k, v in weights.items()}
