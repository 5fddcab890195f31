"""Split a labelled data set across simulated clients.

Three schemes, each a disjoint cover of ``range(len(labels))`` (every sample goes to exactly one
client) and each reproducible bit for bit from its seed:

``iid``
    A random permutation cut into ``num_clients`` near-equal parts (``np.array_split``).
``dirichlet``
    Label skew after Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification" (2019), as implemented in FedLab / NIID-Bench without
    their balancing tweak: for every class ``c`` draw ``p_c ~ Dir(alpha * 1_K)`` over the ``K``
    clients and cut that class's (shuffled) indices at ``floor(cumsum(p_c) * n_c)``. Draws repeat
    until every client holds at least ``min_size`` samples. Small ``alpha`` (0.1) gives each client
    few classes; large ``alpha`` (100) approaches IID.
``shards``
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data"
    (AISTATS 2017): sort by label, cut into ``num_clients * shards_per_client`` contiguous shards,
    deal ``shards_per_client`` random shards to each client. Within a label the order is shuffled
    first, so the seed also picks which samples share a shard.
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")
"""Allowed values of ``scheme`` (and of ``DataConfig.partition``)."""

MAX_DIRICHLET_ATTEMPTS = 1000
"""Redraws allowed before ``dirichlet`` gives up on reaching ``min_size`` for every client."""


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    seed: int | np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Assign every sample index to exactly one client.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(n,)``, values ``>= 0``.
    num_clients : int
        Number of clients ``K``, ``1 <= K <= n``.
    scheme : str
        One of ``"iid"``, ``"dirichlet"``, ``"shards"`` (see the module docstring).
    seed : int or np.random.Generator
        Seed (``>= 0``) or generator; the same seed gives the same split bit for bit.
    alpha : float, default 0.5
        Dirichlet concentration, ``> 0``; ``dirichlet`` only.
    shards_per_client : int, default 2
        Shards dealt to each client, ``>= 1`` and ``K * shards_per_client <= n``; ``shards`` only.
    min_size : int, default 2
        Smallest client size ``dirichlet`` accepts, ``0 <= min_size`` and ``K * min_size <= n``.

    Returns
    -------
    list of np.ndarray
        ``K`` sorted ``int64`` index arrays whose union is ``range(n)`` and which are disjoint.

    Raises
    ------
    ValueError
        For bad labels or arguments, or when ``dirichlet`` cannot give every client ``min_size``
        samples within ``MAX_DIRICHLET_ATTEMPTS`` draws.
    """
    y = _check_labels(labels)
    _check_args(len(y), num_clients, scheme, alpha, shards_per_client, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(len(y), num_clients, rng)
    elif scheme == "dirichlet":
        parts = _dirichlet(y, num_clients, alpha, min_size, rng)
    else:
        parts = _shards(y, num_clients, shards_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def partition_table(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Count the samples of each class held by each client.

    Parameters
    ----------
    parts : list of np.ndarray
        Index arrays as returned by :func:`partition`.
    labels : np.ndarray
        Labels, shape ``(n,)``, values in ``[0, num_classes)``.
    num_classes : int
        Number of classes ``C``, ``>= 1``.

    Returns
    -------
    np.ndarray
        ``int64`` counts, shape ``(len(parts), C)``; row sums are the client sizes.
    """
    y = _check_labels(labels)
    if num_classes < 1 or (len(y) and int(y.max()) >= num_classes):
        raise ValueError(f"num_classes={num_classes} does not cover the labels")
    table = np.zeros((len(parts), num_classes), dtype=np.int64)  # (clients, classes)
    for i, idx in enumerate(parts):
        table[i] = np.bincount(y[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    return table


def _check_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError("labels must be >= 0")
    return y.astype(np.int64)


def _check_args(
    n: int, num_clients: int, scheme: str, alpha: float, shards_per_client: int, min_size: int
) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if not 1 <= num_clients <= n:
        raise ValueError(f"num_clients must be in [1, {n}] (n samples), got {num_clients}")
    if scheme == "dirichlet":
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
        if min_size < 0 or min_size * num_clients > n:
            raise ValueError(
                f"min_size must be in [0, {n // num_clients}] for {num_clients} clients and "
                f"{n} samples, got {min_size}"
            )
    if scheme == "shards" and (shards_per_client < 1 or shards_per_client * num_clients > n):
        raise ValueError(
            f"shards_per_client must be in [1, {n // num_clients}] for {num_clients} clients and "
            f"{n} samples, got {shards_per_client}"
        )


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), num_clients))


def _dirichlet(
    y: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        parts = _dirichlet_draw(by_class, num_clients, alpha, rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(
        f"dirichlet partition with alpha={alpha} gave some client fewer than min_size={min_size} "
        f"samples in {MAX_DIRICHLET_ATTEMPTS} draws; raise alpha, lower num_clients or min_size"
    )


def _dirichlet_draw(
    by_class: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw: split every class's shuffled indices by fresh Dir(alpha) proportions."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for idx in by_class:
        idx = rng.permutation(idx)
        p = rng.dirichlet(np.full(num_clients, alpha))  # (K,)
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
        for client, chunk in enumerate(np.split(idx, cuts)):
            pieces[client].append(chunk)
    return [np.concatenate(chunks) for chunks in pieces]


def _shards(
    y: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]  # sorted by label, random within
    shards = np.array_split(by_label, num_clients * shards_per_client)
    deal = rng.permutation(len(shards)).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in deal]
