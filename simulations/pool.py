"""Many clients over one shared sample pool: each client's samples drawn on demand, Dirichlet label skew.

The disjoint partitions of :mod:`stamen.simulations.partition` need ``clients x samples`` samples in
the data set; for 100,000 clients of 40 samples that is 4 M generated samples. Here the data set is a
fixed-size *pool* (e.g. mnist1d's 80,000 training samples of a 100,000-sample set) and every client
draws its own ``n = samples_per_client`` indices from it, as pfl-research's ``DirichletDataSampler``
(``pfl.data.sampling``) builds artificial users from a central data set:

1. ``p_k ~ Dir(alpha * 1_C)``: client ``k``'s class proportions over the ``C`` classes of the pool,
   drawn as normalised Gamma variates, ``g_c = P^-1(alpha, u_c)`` (the inverse of the regularised
   incomplete gamma function, ``scipy.special.gammaincinv``; in log space where it underflows);
2. ``n`` classes drawn i.i.d. from ``p_k`` (inverse CDF), i.e. counts ``m_k ~ Multinomial(n, p_k)``;
3. for each draw of class ``c``, one index uniform *with replacement* among the pool's class-``c``
   samples.

Clients therefore share samples (a sample is in about ``K * n / pool`` clients, 50 for 100,000
clients of 40 samples over an 80,000 pool), and one client may hold a sample twice (with
probability at most about ``n**2 / (2 * pool / C)``, 10 % for 40 draws all of one class of 8,000;
2.4 % of the clients at ``alpha`` 0.5 over mnist1d's 10 classes). Small
``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) approaches IID draws.

The uniforms ``u`` are counter-based, not drawn from a generator: uniform ``j`` of stream ``s`` of
client ``k`` is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014) of a key hashed from ``(seed, s, k)``, plus ``j``. So a client's samples do not depend
on which other clients were drawn or in which order, a whole cohort is drawn in a few vectorised
numpy operations (a per-client ``np.random.Generator`` costs about 1 ms a client), and nothing is
stored per client: memory is the pool's class index (``O(pool)``) whatever the number of clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import gammaincinv, gammaln  # scipy: a dependency of scikit-learn

STREAMS = {"gamma": 1, "class": 2, "sample": 3}
"""Stream numbers of the three kinds of uniforms a client draws (steps 1-3 of the module docstring)."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2**64 / golden ratio)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


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
        return self.rows(np.array([pid]))[0][0]

    def rows(self, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Several clients' sorted indices at once: ``(rows (c, n), sizes (c,))``, row ``i`` equal
        to ``indices(pids[i])`` (every client has ``n`` samples, so there is no padding)."""
        pids = np.asarray(pids, dtype=np.int64).reshape(-1)
        if len(pids) and (pids.min() < 0 or pids.max() >= self.clients):
            raise ValueError(f"partition ids must be in [0, {self.clients})")
        widths = np.diff(self.class_starts)  # (C,) samples of each class in the pool
        n = self.samples_per_client
        p = dirichlet_rows(self.alpha, uniforms(self.seed, STREAMS["gamma"], pids, len(widths)))  # (c, C)
        cls = categorical_rows(p, uniforms(self.seed, STREAMS["class"], pids, n))  # (c, n)
        within = np.floor(uniforms(self.seed, STREAMS["sample"], pids, n) * widths[cls]).astype(np.int64)
        pos = self.class_starts[cls] + np.minimum(within, widths[cls] - 1)  # (c, n)
        out = self.by_class[pos]
        out.sort(axis=1)
        return out, np.full(len(pids), n, dtype=np.int64)


def splitmix64(z: ArrayLike) -> np.ndarray:
    """SplitMix64's output function of state ``z`` (``uint64``, any shape): ``mix(z + golden)``.

    ``splitmix64(0)`` is ``0xE220A8397B1DCDAF``, the first output of SplitMix64 seeded with 0.
    """
    with np.errstate(over="ignore"):
        x: np.ndarray = np.asarray(z, dtype=np.uint64) + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def uniforms(seed: int, stream: int, pids: np.ndarray, width: int) -> np.ndarray:
    """Uniforms in the open interval ``(0, 1)``, ``float64`` shape ``(len(pids), width)``: entry
    ``[i, j]`` depends only on ``(seed, stream, pids[i], j)`` (53 random bits each)."""
    base = splitmix64(splitmix64(np.uint64(seed)) ^ np.uint64(stream))
    keys = splitmix64(base ^ np.asarray(pids, dtype=np.uint64))  # (c,) one key per client
    with np.errstate(over="ignore"):
        counters = keys[:, None] + np.arange(width, dtype=np.uint64)[None, :] * _GOLDEN  # (c, width)
    bits = splitmix64(counters) >> np.uint64(11)  # 53 bits
    return (bits.astype(np.float64) + 0.5) * 2.0**-53


def dirichlet_rows(alpha: float, u: np.ndarray) -> np.ndarray:
    """``Dir(alpha * 1_C)`` rows from uniforms ``u`` of shape ``(c, C)``: ``g = P^-1(alpha, u)``
    (Gamma(alpha, 1) by inversion), ``p = g / sum(g)`` per row. Where ``g`` underflows (small
    ``alpha``), ``log g = (log u + log Gamma(alpha + 1)) / alpha``, the leading term of the lower tail
    ``P(alpha, g) ~ g**alpha / Gamma(alpha + 1)``; the normalisation runs in log space."""
    g = gammaincinv(alpha, u)  # (c, C)
    tiny = g < 1e-300
    log_g = np.where(tiny, (np.log(u) + gammaln(alpha + 1.0)) / alpha, np.log(np.where(tiny, 1.0, g)))
    log_g -= log_g.max(axis=1, keepdims=True)
    p = np.exp(log_g)
    return p / p.sum(axis=1, keepdims=True)


def categorical_rows(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Class of each uniform in ``u`` (``(c, n)``) under its row's probabilities ``p`` (``(c, C)``)
    by inverse CDF: the number of classes whose cumulative probability is ``<= u``, ``int64 (c, n)``."""
    cdf = np.cumsum(p, axis=1)[:, :-1]  # (c, C - 1): the last bound is 1
    return (u[:, :, None] >= cdf[:, None, :]).sum(axis=2).astype(np.int64)


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
        ``0 <= seed < 2**64``; the same seed gives every client the same samples.

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
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    by_class = np.argsort(y, kind="stable").astype(np.int64)
    _, counts = np.unique(y, return_counts=True)
    starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return PoolPartitioning(
        by_class, starts, int(num_clients), int(samples_per_client), float(alpha), int(seed)
    )
