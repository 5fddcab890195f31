"""Labelled mnist1d slices for Bristle in simulations (the server-mode validation set, the peer
nodes' local test slices), as frozen features of the pre-trained extractor."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from stamen.simulations.data import load_dataset
from stamen.task.models.bristle_transfer import extract_features

VALIDATION_SEED_OFFSET = 7919  # the validation draw is a different mnist1d sample than the task's


@lru_cache(maxsize=64)
def validation_inputs(
    seed: int, classes: tuple[int, ...] = tuple(range(10)), per_class: int = 10, node: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A small labelled mnist1d slice: ``per_class`` raw inputs ``(m, 40)`` of each class in ``classes``.

    The code gives every node 10 test samples of each of its classes (``TEST_SET_SIZE``); the
    server-mode rule uses one slice of all classes. Samples come from an independent mnist1d draw
    (generator seed ``seed + 7919``, 2000 samples, its test split), so they overlap neither the
    clients' training data nor the evaluation split; ``node`` picks a different slice per node.
    """
    if per_class < 1 or not classes:
        raise ValueError(f"validation_slice needs per_class >= 1 and classes, got {per_class}, {classes}")
    data = load_dataset("mnist1d", seed=(seed + VALIDATION_SEED_OFFSET) % 2**32, num_samples=2000)
    rng = np.random.default_rng([seed, node, 0x7E57])
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(data.y_test == c), per_class, replace=False) for c in classes]
    )
    return np.asarray(data.x_test[idx]), np.asarray(data.y_test[idx], dtype=np.int64)


def validation_slice(
    seed: int, classes: Sequence[int] = tuple(range(10)), per_class: int = 10, node: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`validation_inputs` as frozen features ``(m, 350)`` float32 and labels ``(m,)`` int64."""
    x, y = validation_inputs(seed, tuple(int(c) for c in classes), per_class, node)
    return extract_features(x), y
