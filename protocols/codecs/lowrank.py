"""``lowrank(rank=8,power_iters=2)``: truncated-SVD factors of every 2-D tensor.

Each floating 2-D array ``b`` of shape ``(m, n)`` is replaced by rank-``k`` factors,
``k = min(rank, m, n)``, sent as

- ``b.lb``: ``B``, float32, shape ``(m, k)``;
- ``b.la``: ``A``, float32, shape ``(k, n)``;

so that ``b ≈ B @ A`` (the LoRA layout, Hu et al., "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022, eq. 3: ``ΔW = B A``). The factors are the truncated SVD ``U_k S_k V_kᵀ`` with
the singular values split evenly, ``B = U_k √S_k`` and ``A = √S_k V_kᵀ``, so both factors have the
same scale (which keeps a following ``int8`` stage accurate). By Eckart–Young the exact truncated
SVD is the best rank-``k`` approximation in the Frobenius norm.

The SVD is computed with the randomized range finder with ``power_iters`` steps of subspace
iteration and oversampling ``p = 10`` (Halko, Martinsson & Tropp, "Finding structure with
randomness", SIAM Review 2011, Algorithms 4.4 and 5.1), driven by the caller's generator: it costs
``O(m n (k + p) (2 q + 2))`` instead of ``O(m n min(m, n))`` (41 ms instead of 27 s for a
4096 × 4096 matrix). When ``k + p >= min(m, n)`` the sketch spans the whole range and the result is
the exact truncated SVD; for a tensor of rank ``<= k`` it is exact up to rounding.

Other arrays pass through: 1-D (biases), scalars, >2-D tensors, non-float arrays, and 2-D tensors
whose factors would not be smaller than the tensor (``k (m + n) >= m n``). Decode multiplies the
factors in float64 and rounds once to float32: products of float32 numbers are exact in float64,
so a different BLAS summation order moves the sum by ~1e-16 relative and the rounded float32 delta
is the same on sender and receiver except in vanishingly rare rounding ties (the edge runtime's
target-hash check relies on this).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..container import WireArray
from ..errors import CodecError, MalformedUpdate
from ._keys import check_groups, derive_layout, find_groups, put_new
from .base import Arrays, ArrayStage, Layout, Scalar, register

__all__ = ["OVERSAMPLE", "LowRank", "factorize"]

_SUFFIXES = (".lb", ".la")
OVERSAMPLE = 10
_MAX_RANK = 4096
_MAX_ITERS = 10
_BLOCK = 1 << 18  # float64 elements per decode block (2 MB: stays in cache)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(y)  # (m, l) with orthonormal columns
    return q


def factorize(
    x: np.ndarray, rank: int, power_iters: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``k`` factors ``B (m, k)``, ``A (k, n)`` of ``x (m, n)`` by randomized SVD.

    Parameters
    ----------
    x : numpy.ndarray
        Finite 2-D float array, shape ``(m, n)``.
    rank : int
        Target rank, >= 1; ``k = min(rank, m, n)``.
    power_iters : int
        Subspace-iteration steps ``q`` in [0, 10] (Halko et al. 2011, Alg. 4.4).
    rng : numpy.random.Generator
        Source of the Gaussian test matrix.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        float32 ``B = U_k √S_k`` and ``A = √S_k V_kᵀ``.
    """
    a = np.asarray(x, dtype=np.float64)  # (m, n); float64 keeps the QR steps accurate
    m, n = a.shape
    k = min(rank, m, n)
    sketch = min(k + OVERSAMPLE, m, n)
    omega = rng.standard_normal((n, sketch))  # (n, l)
    q = _orthonormal(a @ omega)  # (m, l): approximate range of a
    for _ in range(power_iters):  # (a aᵀ)^q sharpens the spectrum; re-orthonormalize each half-step
        q = _orthonormal(a @ _orthonormal(a.T @ q))
    u_small, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)  # (l, l), (l,), (l, n)
    root = np.sqrt(s[:k])  # (k,)
    b = (q @ u_small[:, :k]) * root  # (m, k)
    return b.astype(np.float32), (root[:, None] * vt[:k]).astype(np.float32)


@register
class LowRank(ArrayStage):
    """Truncated-SVD low-rank factorization of 2-D tensors.

    Parameters
    ----------
    rank : int, default 8
        Kept rank per 2-D tensor, in [1, 4096].
    power_iters : int, default 2
        Randomized-SVD subspace iterations, in [0, 10]; more is slower and closer to the exact
        truncated SVD when the spectrum decays slowly.
    """

    name = "lowrank"
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({"rank": 8, "power_iters": 2})

    @classmethod
    def check_params(cls, params: Mapping[str, Scalar]) -> None:
        """``rank`` in [1, 4096] and ``power_iters`` in [0, 10]."""
        rank, iters = params["rank"], params["power_iters"]
        if not 1 <= int(rank) <= _MAX_RANK:
            raise CodecError(f"codec stage 'lowrank' param 'rank': {rank!r} not in [1, {_MAX_RANK}]")
        if not 0 <= int(iters) <= _MAX_ITERS:
            raise CodecError(f"codec stage 'lowrank' param 'power_iters': {iters!r} not in [0, {_MAX_ITERS}]")

    @property
    def rank(self) -> int:
        """Kept rank, >= 1."""
        return int(self.params["rank"])

    def _factorizes(self, arr: np.ndarray) -> bool:
        return arr.dtype.kind == "f" and self._factors_smaller(arr.shape)

    def _factors_smaller(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != 2 or 0 in shape:
            return False
        m, n = shape
        k = min(self.rank, m, n)
        return k * (m + n) < m * n

    def encoded_layout(self, layout: Layout) -> Layout:
        """Factorizable 2-D floating ``b`` of shape (m, n) becomes ``b.lb`` (m, k) and ``b.la``
        (k, n); others pass through. For a bounded shape, both forms bound the entry."""

        def factors(key: str, w: WireArray) -> Layout:
            if len(w.shape) != 2 or not (self._factors_smaller(w.shape) or not w.exact):
                return {key: w}
            m, n = w.shape
            k = min(self.rank, m, n)
            f32 = np.dtype(np.float32)
            out = {key + ".lb": WireArray(f32, (m, k)), key + ".la": WireArray(f32, (k, n))}
            return out if w.exact else {key: w, **out}

        return derive_layout(layout, factors)

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace each factorizable 2-D array ``b`` by ``b.lb`` and ``b.la``; others pass through.

        Raises
        ------
        CodecError
            If a factorizable tensor has non-finite values.
        """
        out: Arrays = {}
        produced = []
        for key, arr in arrays.items():
            if not self._factorizes(arr):
                put_new(out, key, arr, self.name)
                continue
            if not np.all(np.isfinite(arr)):
                raise CodecError(f"lowrank: tensor {key!r} has non-finite values")
            b, a = factorize(arr, self.rank, int(self.params["power_iters"]), rng)
            put_new(out, key + ".lb", b, self.name)
            put_new(out, key + ".la", a, self.name)
            produced.append(key)
        check_groups(self.name, out, produced, _SUFFIXES)
        return out

    def _expand(self, key: str, b: np.ndarray, a: np.ndarray, budget: int) -> np.ndarray:
        if b.dtype.kind != "f" or a.dtype.kind != "f" or b.ndim != 2 or a.ndim != 2:
            raise MalformedUpdate(f"lowrank: factors of {key!r} must be 2-D float arrays")
        (m, k), (k2, n) = b.shape, a.shape
        if k != k2 or not 1 <= k <= min(self.rank, m, n):
            raise MalformedUpdate(f"lowrank: factors of {key!r} have shapes {b.shape} and {a.shape}")
        if m * n > budget:  # checked before allocating: small factors cannot claim a huge tensor
            raise MalformedUpdate(f"lowrank: tensor {key!r} of {m * n} elements exceeds the limit")
        b64, a64 = b.astype(np.float64), a.astype(np.float64)  # f32 products are exact in f64
        out = np.empty((m, n), dtype=np.float32)
        rows = max(1, _BLOCK // max(n, 1))  # row blocks keep the float64 temporary ~2 MB
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite values: receiver validates
            for start in range(0, m, rows):
                out[start : start + rows] = b64[start : start + rows] @ a64  # (rows, n), rounded once
        return out

    def decode(self, arrays: Arrays) -> Arrays:
        """Multiply every ``b.lb``/``b.la`` pair back into a float32 array ``b`` of shape (m, n).

        Raises
        ------
        MalformedUpdate
            If a pair is not two 2-D float arrays with a shared inner dimension in
            ``[1, min(rank, m, n)]``, or the tensors would exceed ``max_elements`` in total.
        """
        groups = find_groups(arrays, _SUFFIXES)
        consumed = {base + s for base in groups for s in _SUFFIXES}
        out: Arrays = {k: a for k, a in arrays.items() if k not in consumed}
        budget = self.max_elements
        for base in groups:
            dense = self._expand(base, arrays[base + ".lb"], arrays[base + ".la"], budget)
            budget -= dense.size
            put_new(out, base, dense, self.name)
        return out
