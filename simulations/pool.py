"""Many clients over one shared sample pool: each client's samples drawn on demand, Dirichlet label skew.

The disjoint partitions of :mod:`stamen.simulations.partition` need ``clients x samples`` samples in
the data set; for 100,000 clients of 40 samples that is 4 M generated samples. Here the data set is a
fixed-size *pool* (e.g. mnist1d's 80,000 training samples of a 100,000-sample set) and every client
draws its own ``samples_per_client`` indices from it, as pfl-research's ``DirichletDataSampler``
(``pfl.data.sampling``) builds artificial users from a central data set:

1. ``p_k ~ Dir(alpha * 1_C)``: client ``k``'s class proportions over the ``C`` classes of the pool;
2. ``m_k ~ Multinomial(n, p_k)``: how many of its ``n`` samples come from each class;
3. for each class ``c``, ``m_k[c]`` indices drawn uniformly *with replacement* from the pool's
   class-``c`` samples.

Clients therefore share samples (a sample is in about ``K * n / pool`` clients, 50 for 100,000
clients of 40 samples over an 80,000 pool), and one client may hold a sample twice (with
probability about ``n**2 / (2 * pool / C)``, ~1 % at 40 samples over 8,000 per class). Small
``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) approaches IID draws.

Each client's draw uses its own generator, ``np.random.default_rng([seed, k, POOL_STREAM])``, so a
client's samples do not depend on which other clients were drawn, or in which order, and nothing is
stored per client: memory is the pool's class index (``O(pool)``) whatever the number of clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POOL_STREAM = 0x9001
"""Third word of every client's seed sequence (separates this stream from the others of a seed)."""


@dataclass(frozen=True, eq=False)
class PoolPartitioning:
    """``num_clients`` clients of ``samples_per_client`` samples each, drawn from one labelled pool.

    Same interface as :class:`~stamen.simulations.partition.Partitioning` (``num_clients``,
    ``sizes``, ``indices``, ``rows``); build it with :func:`build_pool_partitioning`.

    Attributes
    ----------
    by_class : np.ndarray
        ``int64`` pool indices sorted by label (stable), shape ``(pool,)``.
    class_starts : np.ndarray
        ``int64`` offsets of each class in ``by_class``, shape ``(C + 1,)``.
    clients, samples_per_client, alpha, seed : int, int, float, int
        ``K >= 1``, ``n >= 1``, the Dirichlet concentration ``> 0``, and the seed ``>= 0``.
    """

    by_class: np.ndarray
    class_starts: np.ndarray
    clients: int
    samples_per_client: int
    alpha: float
    seed: int

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return self.clients

    def sizes(self) -> np.ndarray:
        """``int64`` samples per client, shape ``(K,)``: ``samples_per_client`` for everyone."""
        return np.full(self.clients, self.samples_per_client, dtype=np.int64)

    def indices(self, pid: int) -> np.ndarray:
        """Client ``pid``'s pool indices, sorted ``int64`` of length ``samples_per_client`` (repeats
        possible; ``0 <= pid < K``)."""
        if not 0 <= pid < self.clients:
            raise ValueError(f"partition id {pid} out of range [0, {self.clients})")
        return self._draw(int(pid))

    def rows(self, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Several clients' sorted indices at once: ``(rows (c, n), sizes (c,))``, row ``i`` equal
        to ``indices(pids[i])`` (every client has ``n`` samples, so there is no padding)."""
        pids = np.asarray(pids, dtype=np.int64)
        if len(pids) and (pids.min() < 0 or pids.max() >= self.clients):
            raise ValueError(f"partition ids must be in [0, {self.clients})")
        out = np.empty((len(pids), self.samples_per_client), dtype=np.int64)  # (c, n)
        for i, pid in enumerate(pids.tolist()):
            out[i] = self._draw(pid)
        return out, np.full(len(pids), self.samples_per_client, dtype=np.int64)

    def _draw(self, pid: int) -> np.ndarray:
        """Steps 1-3 of the module docstring for client ``pid``, from its own generator."""
        rng = np.random.default_rng([self.seed, pid, POOL_STREAM])
        widths = np.diff(self.class_starts)  # (C,) samples of each class in the pool
        p = rng.dirichlet(np.full(len(widths), self.alpha))  # (C,)
        counts = rng.multinomial(self.samples_per_client, p)  # (C,), sums to n
        cls = np.repeat(np.arange(len(widths)), counts)  # (n,) class of each draw
        pos = self.class_starts[cls] + rng.integers(0, widths[cls])  # (n,) uniform within the class
        return np.sort(self.by_class[pos])


def build_pool_partitioning(
    labels: np.ndarray, num_clients: int, samples_per_client: int, *, alpha: float, seed: int
) -> PoolPartitioning:
    """Index the pool by class for :class:`PoolPartitioning` (draws nothing yet).

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels of the pool, shape ``(pool,)``, values ``>= 0``; the classes are the
        distinct values present.
    num_clients : int
        Number of clients ``K >= 1`` (may exceed the pool size: clients share samples).
    samples_per_client : int
        Samples each client draws, ``n >= 1``.
    alpha : float
        Dirichlet concentration over the classes, finite and ``> 0``.
    seed : int
        ``0 <= seed < 2**63``; the same seed gives every client the same samples.

    Returns
    -------
    PoolPartitioning
        ``O(pool)`` integers, however many clients.

    Raises
    ------
    ValueError
        For labels that are not a non-empty 1-D array of integers ``>= 0``, or an argument out of range.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0 or not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0:
        raise ValueError(f"labels must be a non-empty 1-D array of integers >= 0, got shape {y.shape}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if samples_per_client < 1:
        raise ValueError(f"samples_per_client must be >= 1, got {samples_per_client}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    by_class = np.argsort(y, kind="stable").astype(np.int64)
    _, counts = np.unique(y, return_counts=True)
    starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return PoolPartitioning(by_class, starts, int(num_clients), int(samples_per_client), float(alpha), int(seed))
