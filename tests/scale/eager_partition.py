"""Slow reference: the eager ``partition()`` as it was before issue #15 (one array per client).

Frozen copy of ``simulations/partition.py`` at c25271e (the scheme code only; argument checks are
shared). The lazy :class:`stamen.simulations.partition.Partitioning` must give the same index sets
bit for bit for the same seed; tests/scale/test_partitioning.py holds the two together.
"""

from __future__ import annotations

import numpy as np

MAX_DIRICHLET_ATTEMPTS = 1000


def eager_partition(
    y: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    seed: int | np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 2,
) -> list[np.ndarray]:
    """The pre-#15 ``partition`` (inputs assumed valid): sorted ``int64`` arrays, one per client."""
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = list(np.array_split(rng.permutation(len(y)), num_clients))
    elif scheme == "dirichlet":
        parts = _dirichlet(y, num_clients, alpha, min_size, rng)
    else:
        parts = _shards(y, num_clients, shards_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    y: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                pieces[client].append(chunk)
        parts = [np.concatenate(chunks) for chunks in pieces]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError("dirichlet: min_size not reached")


def _shards(
    y: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_clients * shards_per_client)
    deal = rng.permutation(len(shards)).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in deal]
