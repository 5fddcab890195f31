"""``label_flip``: data poisoning by flipping training labels (client side).

* all classes (default): ``y -> C - 1 - y`` (Fang et al. 2020's and Bristle's ``label_flip_all``;
  also Tolpegin et al. 2020's untargeted variant);
* two classes (``source`` and ``target`` given): every ``source`` label becomes ``target``, other
  labels stay (the targeted flip of Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against
  Federated Learning Systems", ESORICS 2020).

Features are untouched; inputs are never modified in place.
"""

from __future__ import annotations

import numpy as np

from stamen.simulations.attacks.base import DataAttack, register_data_attack


def _class_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise ValueError(f"label_flip: {name} must be a class index >= 0, got {value!r}")
    return int(value)


@register_data_attack("label_flip")
def label_flip(source: int | None = None, target: int | None = None) -> DataAttack:
    """All-class flip ``y -> C - 1 - y``, or ``source -> target`` when both are given."""
    if (source is None) != (target is None):
        raise ValueError("label_flip: give both source and target (2-class flip) or neither (all classes)")
    pair = None if source is None else (_class_id("source", source), _class_id("target", target))

    def attack(
        x: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        del rng  # deterministic
        labels = np.asarray(y)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"label_flip: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
            )
        if pair is None:
            return x, (num_classes - 1 - labels).astype(labels.dtype)
        if max(pair) >= num_classes:
            raise ValueError(f"label_flip: source/target {pair} outside the {num_classes} classes")
        return x, np.where(labels == pair[0], pair[1], labels).astype(labels.dtype)

    return attack
