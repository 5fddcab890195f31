"""Calibration of DP-SGD's noise (Abadi et al., CCS 2016) for a whole federation, before round 1."""

from __future__ import annotations

import math
from collections.abc import Sequence

from stamen.privacy.accounting import calibrate_noise_multiplier


def calibrate_dp_sgd_noise(
    target_epsilon: float,
    delta: float,
    partition_sizes: Sequence[int],
    batch_size: int,
    epochs: int,
    rounds: int,
    accountant: str = "rdp",
) -> float:
    """Noise multiplier with which *every* client stays within ``target_epsilon`` even if it trains
    in all ``rounds`` rounds (the max over partition sizes of the per-client calibration, with opacus'
    ``q = 1 / ceil(n/B)`` and ``int(1/q)`` steps per epoch)."""
    if batch_size < 1 or epochs < 1 or rounds < 1:
        raise ValueError(f"batch_size, epochs, rounds must be >= 1, got {batch_size}, {epochs}, {rounds}")
    sizes = sorted({int(n) for n in partition_sizes if int(n) > 0})
    if not sizes:
        raise ValueError("partition_sizes must contain at least one non-empty partition")
    zs = []
    for n in sizes:
        q = 1.0 / math.ceil(n / batch_size)
        steps = rounds * epochs * int(1 / q)
        zs.append(calibrate_noise_multiplier(target_epsilon, delta, q, steps, accountant))
    return max(zs)
