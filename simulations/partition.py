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

Memory does not grow with one array per client: :func:`build_partitioning` returns a
:class:`Partitioning`, one flat index array (a permutation of the samples) plus each client's
segments of it (``(K, S)`` offsets and lengths; ``S`` is 1 for ``iid``, the number of classes for
``dirichlet``, ``shards_per_client`` for ``shards``), and a client's sorted indices are cut out on
demand. It draws from the generator in exactly the order the eager version did, so
``Partitioning.indices(k)`` equals the former ``partition(...)[k]`` bit for bit (tested against a
frozen copy); :func:`partition` still returns the full list for callers that want it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")
"""Allowed values of ``scheme`` (and of ``DataConfig.partition``)."""

MAX_DIRICHLET_ATTEMPTS = 1000
"""Redraws allowed before ``dirichlet`` gives up on reaching ``min_size`` for every client."""


@dataclass(frozen=True, eq=False)
class Partitioning:
    """Clients as segments of one flat index array; indices are built on demand.

    Attributes
    ----------
    flat : np.ndarray
        ``int64`` sample indices, shape ``(n,)``, each exactly once.
    starts, lengths : np.ndarray
        ``int64`` offsets into ``flat`` and segment lengths, shape ``(K, S)``: client ``k`` holds
        ``flat[starts[k, s] : starts[k, s] + lengths[k, s]]`` for every ``s``.
    """

    flat: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return int(self.starts.shape[0])

    def sizes(self) -> np.ndarray:
        """``int64`` samples per client, shape ``(K,)``."""
        return self.lengths.sum(axis=1)

    def indices(self, pid: int) -> np.ndarray:
        """Client ``pid``'s sample indices, sorted ``int64`` (``0 <= pid < K``)."""
        if not 0 <= pid < self.num_clients:
            raise ValueError(f"partition id {pid} out of range [0, {self.num_clients})")
        segs = [self.flat[a : a + n] for a, n in zip(self.starts[pid], self.lengths[pid], strict=True)]
        return np.sort(np.concatenate(segs))

    def rows(self, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Several clients' sorted indices at once, padded: ``(rows (c, width), sizes (c,))``.

        Row ``i`` starts with ``indices(pids[i])``; the padding after ``sizes[i]`` is 0.
        """
        pids = np.asarray(pids, dtype=np.int64)
        if len(pids) and (pids.min() < 0 or pids.max() >= self.num_clients):
            raise ValueError(f"partition ids must be in [0, {self.num_clients})")
        lengths, starts = self.lengths[pids], self.starts[pids]  # (c, S)
        sizes = lengths.sum(axis=1)
        sentinel = len(self.flat)  # sorts after every index
        out = np.full((len(pids), int(sizes.max(initial=0))), sentinel, dtype=np.int64)
        cols = np.cumsum(lengths, axis=1) - lengths  # where each segment starts in its row
        for s in range(lengths.shape[1]):
            r, i = np.nonzero(np.arange(lengths[:, s].max(initial=0)) < lengths[:, s, None])
            out[r, cols[r, s] + i] = self.flat[starts[r, s] + i]
        out.sort(axis=1)
        out[out == sentinel] = 0
        return out, sizes


def build_partitioning(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    seed: int | np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 2,
) -> Partitioning:
    """Assign every sample index to exactly one client, as a lazy :class:`Partitioning`.

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
    Partitioning
        ``O(n + K * S)`` integers; ``indices(k)`` is client ``k``'s sorted index array.

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
        return _iid(len(y), num_clients, rng)
    if scheme == "dirichlet":
        return _dirichlet(y, num_clients, alpha, min_size, rng)
    return _shards(y, num_clients, shards_per_client, rng)


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
    """Every client's sorted ``int64`` index array, as a list (see :func:`build_partitioning` for
    the parameters; prefer it when the number of clients is large)."""
    parts = build_partitioning(
        labels,
        num_clients,
        scheme,
        seed=seed,
        alpha=alpha,
        shards_per_client=shards_per_client,
        min_size=min_size,
    )
    return [parts.indices(k) for k in range(num_clients)]


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


def _equal_parts(n: int, parts: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of parts ``ids`` of ``np.array_split(range(n), parts)`` (the first
    ``n % parts`` parts are one longer), computed in place of a gather from a bounds table."""
    each, extra = divmod(n, parts)
    starts = np.minimum(ids, extra)
    starts += ids * each
    lengths = (ids < extra).astype(np.int64)
    lengths += each
    return starts, lengths


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> Partitioning:
    starts, lengths = _equal_parts(n, num_clients, np.arange(num_clients, dtype=np.int64)[:, None])
    return Partitioning(rng.permutation(n), starts, lengths)


def _dirichlet(
    y: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> Partitioning:
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        parts = _dirichlet_draw(by_class, num_clients, alpha, rng)
        if int(parts.sizes().min()) >= min_size:
            return parts
    raise ValueError(
        f"dirichlet partition with alpha={alpha} gave some client fewer than min_size={min_size} "
        f"samples in {MAX_DIRICHLET_ATTEMPTS} draws; raise alpha, lower num_clients or min_size"
    )


def _dirichlet_draw(
    by_class: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> Partitioning:
    """One draw: split every class's shuffled indices by fresh Dir(alpha) proportions; client ``k``
    gets segment ``k`` of every class (``np.split`` at ``floor(cumsum(p) * n_c)``)."""
    shape = (num_clients, len(by_class))
    starts, lengths = np.empty(shape, dtype=np.int64), np.empty(shape, dtype=np.int64)
    flats, offset = [], 0
    for c, idx in enumerate(by_class):
        idx = rng.permutation(idx)
        p = rng.dirichlet(np.full(num_clients, alpha))  # (K,)
        cuts = np.minimum((np.cumsum(p) * len(idx)).astype(np.int64)[:-1], len(idx))  # monotone
        bounds = np.concatenate(([0], cuts, [len(idx)]))
        starts[:, c], lengths[:, c] = offset + bounds[:-1], np.diff(bounds)
        flats.append(idx)
        offset += len(idx)
    return Partitioning(np.concatenate(flats).astype(np.int64), starts, lengths)


def _shards(
    y: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> Partitioning:
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]  # sorted by label, random within
    deal = rng.permutation(num_clients * shards_per_client).reshape(num_clients, shards_per_client)
    starts, lengths = _equal_parts(len(y), num_clients * shards_per_client, deal)
    return Partitioning(by_label.astype(np.int64), starts, lengths)
