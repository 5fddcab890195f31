"""``topk(ratio=0.01)``: keep the largest-magnitude entries of each tensor.

Per floating array ``b`` of ``n`` elements, keep ``k = min(n, max(1, ceil(ratio * n)))``
entries with the largest ``|x|`` and send them as three arrays:

- ``b.i``: sorted flat indices, uint16 if ``n - 1 < 2**16``, else uint32 (uint64 beyond);
- ``b.v``: the kept values, float32;
- ``b.s``: the original shape, uint32 (uint64 if a dimension needs it).

Decode scatters the values into zeros. Wire size is about ``k * (2 or 4 + 4)`` bytes. Ties at
the k-th magnitude go to the lowest indices (:func:`largest_indices`), so the same input yields the
same payload on every machine (``numpy.argpartition`` alone breaks ties differently depending on
the SIMD kernel the CPU selects). Usually paired with error feedback
(residual accumulation) on the client; see Stich et al., "Sparsified SGD with Memory", NeurIPS
2018, and Aji & Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..container import WireArray
from ..errors import MalformedUpdate
from ._keys import derive_layout, find_groups, put_new, split_arrays
from .base import Arrays, ArrayStage, CodecError, Layout, Scalar, register

__all__ = ["TopK", "index_dtype", "kept_count", "largest_indices"]

_SUFFIXES = (".i", ".v", ".s")
_MAX_NDIM = 16


def kept_count(ratio: float, n: int) -> int:
    """Entries kept out of ``n``: ``min(n, max(1, ceil(ratio * n)))`` (0 for an empty tensor)."""
    return min(n, max(1, math.ceil(ratio * n)))


def index_dtype(n: int) -> np.dtype:
    """Smallest of uint16/uint32/uint64 that holds every index ``0 .. n - 1``."""
    if n <= 2**16:
        return np.dtype(np.uint16)
    if n <= 2**32:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def largest_indices(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` largest entries of a 1-D array; ties go to the lowest indices.

    The k-th largest value ``t`` is an order statistic, so ``numpy.partition`` finds the same
    ``t`` whatever its algorithm; every index above ``t`` is kept, then the lowest-index entries
    equal to ``t``. NaN counts as larger than every number (as in ``numpy.sort``). O(n) time.

    Parameters
    ----------
    magnitudes : numpy.ndarray
        (n,) values to rank, e.g. ``|x|``.
    k : int
        Number of indices to keep, in ``0 .. n``.

    Returns
    -------
    numpy.ndarray
        (k,) int64 indices in increasing order.
    """
    n = magnitudes.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.partition(magnitudes, n - k)  # NaNs sort last, so any NaN kept lies in part[n - k:]
    t = part[n - k]  # the k-th largest value
    nans = np.flatnonzero(np.isnan(magnitudes)) if np.isnan(part[n - k :]).any() else np.zeros(0, np.intp)
    if nans.size >= k:
        return nans[:k].astype(np.int64)
    ge = np.flatnonzero(magnitudes >= t)  # (>= k - #NaN,) sorted
    vals = magnitudes[ge]
    above, ties = ge[vals > t], ge[vals == t]
    kept = np.concatenate([nans, above, ties[: k - nans.size - above.size]])
    return np.sort(kept).astype(np.int64)


def _shape_dtype(shape: tuple[int, ...]) -> np.dtype:
    return np.dtype(np.uint64 if any(d >= 2**32 for d in shape) else np.uint32)


@register
class TopK(ArrayStage):
    """Magnitude top-k sparsification.

    Parameters
    ----------
    ratio : float, default 0.01
        Fraction of entries kept per tensor, in (0, 1].
    """

    name = "topk"
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({"ratio": 0.01})

    @classmethod
    def check_params(cls, params: Mapping[str, Scalar]) -> None:
        """``ratio`` must lie in (0, 1]."""
        ratio = params["ratio"]
        if not 0.0 < float(ratio) <= 1.0:
            raise CodecError(f"codec stage 'topk' param 'ratio': {ratio!r} not in (0, 1]")

    @property
    def ratio(self) -> float:
        """Kept fraction in (0, 1]."""
        return float(self.params["ratio"])

    def _sparsify(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = arr.reshape(-1)  # (n,)
        n = flat.size
        k = kept_count(self.ratio, n)
        if k == n:
            return np.arange(n, dtype=index_dtype(n)), flat.astype(np.float32)
        idx = largest_indices(np.abs(flat), k)  # (k,)
        return idx.astype(index_dtype(n)), flat[idx].astype(np.float32)

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace each floating array ``b`` by ``b.i``, ``b.v``, ``b.s``; others pass through."""

        def split(key: str, arr: np.ndarray) -> dict[str, np.ndarray]:
            idx, values = self._sparsify(arr)
            return {".i": idx, ".v": values, ".s": np.array(arr.shape, dtype=_shape_dtype(arr.shape))}

        return split_arrays(arrays, self.name, _SUFFIXES, split)

    def encoded_layout(self, layout: Layout) -> Layout:
        """Each floating ``b`` of ``n`` elements becomes ``k`` indices, ``k`` values and its shape."""

        def sparse(key: str, w: WireArray) -> Layout:
            n = w.count
            k = kept_count(self.ratio, n)
            return {
                key + ".i": WireArray(index_dtype(n), (k,)),
                key + ".v": WireArray(np.dtype(np.float32), (k,)),
                key + ".s": WireArray(_shape_dtype(w.shape), (len(w.shape),)),
            }

        return derive_layout(layout, sparse)

    def _densify(self, key: str, group: tuple[np.ndarray, np.ndarray, np.ndarray], budget: int) -> np.ndarray:
        idx, values, shape = group
        if shape.dtype not in (np.uint32, np.uint64) or shape.ndim != 1 or shape.size > _MAX_NDIM:
            raise MalformedUpdate(f"topk: bad shape array for {key!r}")
        dims = tuple(int(d) for d in shape)
        n = math.prod(dims)
        if n > budget:  # checked before allocating: a tiny payload cannot claim a huge tensor
            raise MalformedUpdate(f"topk: tensor {key!r} of {n} elements exceeds the limit")
        k = kept_count(self.ratio, n)
        if idx.dtype != index_dtype(n) or idx.shape != (k,):
            raise MalformedUpdate(f"topk: {key!r} needs {k} {index_dtype(n)} indices")
        if values.dtype.kind != "f" or values.shape != (k,):
            raise MalformedUpdate(f"topk: {key!r} needs {k} float values")
        if k and (int(idx[-1]) >= n or not np.all(idx[1:] > idx[:-1])):
            raise MalformedUpdate(f"topk: indices of {key!r} not strictly increasing below {n}")
        dense = np.zeros(n, dtype=np.float32)  # (n,)
        dense[idx] = values
        return dense.reshape(dims)

    def decode(self, arrays: Arrays) -> Arrays:
        """Scatter every ``b.i``/``b.v``/``b.s`` group back into a dense float32 array ``b``.

        Raises
        ------
        MalformedUpdate
            If a group has wrong dtypes, lengths, unsorted or out-of-range indices, or the
            tensors would exceed ``max_elements`` in total.
        """
        groups = find_groups(arrays, _SUFFIXES)
        consumed = {base + s for base in groups for s in _SUFFIXES}
        out: Arrays = {k: a for k, a in arrays.items() if k not in consumed}
        budget = self.max_elements
        for base in groups:
            group = (arrays[base + ".i"], arrays[base + ".v"], arrays[base + ".s"])
            dense = self._densify(base, group, budget)
            budget -= dense.size
            put_new(out, base, dense, self.name)
        return out
