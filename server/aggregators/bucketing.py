"""``bucketing`` (Karimireddy, He, Jaggi, ICLR 2022).

Karimireddy et al., "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing",
Algorithm 1: draw a uniformly random permutation ``pi`` of the ``n`` updates, split it into
``ceil(n / s)`` consecutive buckets of ``s`` updates (the last one may be smaller) and replace the
stack by the bucket means

    y_i = mean{ x_pi(k) : k = (i-1)s+1 .. min(n, i s) },   i = 1 .. ceil(n/s);

then any robust rule runs on ``y``. The last, partial bucket is averaged over its own size (the
paper writes ``1/s``; ByzFL's implementation also takes the plain mean). A fresh permutation is
drawn every call from a generator seeded once per run, so runs are reproducible. With weights, a
bucket's weight is the sum of its members' weights (the means themselves are unweighted, as in
the paper).
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import as_stack, check_count
from stamen.server.aggregators.base import check_stack
from stamen.server.aggregators.pre_base import PreAggregator, register_pre


def bucket_means(x: np.ndarray, perm: np.ndarray, size: int) -> np.ndarray:
    """``(ceil(n/s), d)`` float32: row ``b`` is the plain mean of the rows ``perm[b*s:(b+1)*s]``.

    Each bucket's rows are added one by one into its output row and divided by the bucket's
    size: one read of every update, no permuted copy of the stack and no ``(m, n) @ (n, d)`` product.
    """
    n = perm.shape[0]
    out = np.empty((-(-n // size), x.shape[1]), dtype=np.float32)
    for b, row in enumerate(out):
        members = perm[b * size : (b + 1) * size]
        row[...] = x[members[0]]
        for j in members[1:]:
            row += x[j]
        row /= np.float32(members.shape[0])
    return out


class Bucketing:
    """Stateful (its generator) bucketing pre-aggregator; one instance per run."""

    def __init__(self, bucket_size: int, seed: int) -> None:
        self.bucket_size = bucket_size
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, updates: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Bucket means of a fresh random permutation."""
        w = check_stack(updates, weights)
        x = as_stack(updates)
        perm = self.rng.permutation(x.shape[0])
        means = bucket_means(x, perm, self.bucket_size)  # (m, d)
        if w is None:
            return means, None
        return means, np.add.reduceat(w[perm], np.arange(0, perm.shape[0], self.bucket_size))


@register_pre("bucketing")
def bucketing(bucket_size: int = 2, seed: int = 0) -> PreAggregator:
    """Random bucketing.

    Parameters
    ----------
    bucket_size : int, default 2
        ``s >= 1`` updates per bucket (the paper's experiments use ``s = 2``); ``s = 1`` only shuffles.
    seed : int, default 0
        Seed of the permutation generator (``build_aggregator`` passes one derived from the run seed).
    """
    size = check_count("bucketing: bucket_size", bucket_size, 1)
    return Bucketing(size, check_count("bucketing: seed", seed))
