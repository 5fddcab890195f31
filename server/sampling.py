"""Deterministic client sampling, shared by both engines so they pick the same partitions."""

from __future__ import annotations

import numpy as np


def sample_clients(seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """Pick ``k`` distinct partition ids out of ``range(num_clients)`` for ``server_round``.

    Uniform without replacement from a generator seeded by ``(seed, server_round)``; the result is
    sorted so that replies are aggregated in a fixed order.
    """
    if not 1 <= k <= num_clients:
        raise ValueError(f"k must be in [1, {num_clients}], got {k}")
    if k == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, server_round, 0x5EED])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
