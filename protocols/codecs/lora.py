"""``lora``: send only what a parameter-efficient trainer changed, losslessly.

A LoRA, Fed-SB or sparse fine-tuning update is exactly zero on every frozen tensor (the whole
pretrained model) and non-zero only on the adapter factors (``r (in + out)`` numbers per LoRA layer,
``r²`` per Fed-SB layer), the head, or a fixed-density set of entries. Each floating array ``b`` is
sent in the cheapest exact form:

- all zeros: ``b.lz``, its shape only (uint32, or uint64 if a dimension needs it);
- sparse, when ``nnz · (index bytes + 4) < 4 n``: ``b.li`` sorted flat indices (uint16 if
  ``n <= 2**16``, else uint32/uint64), ``b.lv`` float32 values, ``b.ls`` the shape;
- otherwise dense float32 under its own key (the adapter factors and the head).

So the wire carries the adapter factors (their change), not a dense ``ΔW`` (Hu et al., ICLR 2022,
§4.2: only ``A`` and ``B`` need storing per task), and a sparse fine-tuning update as indices +
values (Ansell et al., ACL 2022). Decoding restores float32 arrays bit for bit. Lossy stages
(``int8``, ``fp16``) may follow; a byte stage (``zstd``) may close the pipeline.
"""

from __future__ import annotations

import math

import numpy as np

from ..container import WireArray
from ..errors import MalformedUpdate
from ._keys import check_groups, derive_layout, find_groups, put_new
from .base import Arrays, ArrayStage, Layout, register
from .topk import index_dtype

__all__ = ["LoRADelta", "sparse_wins"]

_ZERO = (".lz",)
_SPARSE = (".li", ".lv", ".ls")
_MAX_NDIM = 16


def sparse_wins(n: int, nnz: int) -> bool:
    """True iff indices + values (``nnz · (idx + 4)`` bytes) beat dense float32 (``4 n`` bytes)."""
    return nnz * (index_dtype(n).itemsize + 4) < 4 * n


def _shape_dtype(shape: tuple[int, ...]) -> np.dtype:
    return np.dtype(np.uint64 if any(d >= 2**32 for d in shape) else np.uint32)


def _shape(arr: np.ndarray) -> np.ndarray:
    return np.array(arr.shape, dtype=_shape_dtype(arr.shape))


@register
class LoRADelta(ArrayStage):
    """Exact zero / sparse / dense encoding per tensor; no params."""

    name = "lora"

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace zero arrays by ``b.lz`` and sparse ones by ``b.li``/``b.lv``/``b.ls``."""
        out: Arrays = {}
        zeros, sparse = [], []
        for key, arr in arrays.items():
            if arr.dtype.kind != "f":
                put_new(out, key, arr, self.name)
                continue
            flat = arr.reshape(-1)
            nz = np.flatnonzero(flat)  # sorted; -0.0 counts as zero (decodes to +0.0, equal value)
            if nz.size == 0:
                put_new(out, key + ".lz", _shape(arr), self.name)
                zeros.append(key)
            elif sparse_wins(flat.size, nz.size):
                put_new(out, key + ".li", nz.astype(index_dtype(flat.size)), self.name)
                put_new(out, key + ".lv", flat[nz].astype(np.float32), self.name)
                put_new(out, key + ".ls", _shape(arr), self.name)
                sparse.append(key)
            else:
                put_new(out, key, arr.astype(np.float32, copy=False), self.name)
        check_groups(self.name, out, zeros, _ZERO)
        check_groups(self.name, out, sparse, _SPARSE)
        return out

    def encoded_layout(self, layout: Layout) -> Layout:
        """Each floating ``b`` becomes one of three forms, so all three bound it: ``b.lz``; ``b.li``,
        ``b.lv``, ``b.ls`` with fewer non-zeros than make sparse win; or float32 ``b``."""

        def forms(key: str, w: WireArray) -> Layout:
            n, shape = w.count, WireArray(_shape_dtype(w.shape), (len(w.shape),), exact=False)
            nnz = max(0, (4 * n - 1) // (index_dtype(n).itemsize + 4))  # most for which sparse wins
            return {
                key + ".lz": shape,
                key + ".li": WireArray(index_dtype(n), (nnz,), exact=False),
                key + ".lv": WireArray(np.dtype(np.float32), (nnz,), exact=False),
                key + ".ls": shape,
                key: WireArray(np.dtype(np.float32), w.shape, exact=False),
            }

        return derive_layout(layout, forms)

    def _dims(self, key: str, shape: np.ndarray, budget: int) -> tuple[tuple[int, ...], int]:
        if shape.dtype not in (np.uint32, np.uint64) or shape.ndim != 1 or shape.size > _MAX_NDIM:
            raise MalformedUpdate(f"lora: bad shape array for {key!r}")
        dims = tuple(int(d) for d in shape)
        n = math.prod(dims)
        if n > budget:  # checked before allocating: a tiny payload cannot claim a huge tensor
            raise MalformedUpdate(f"lora: tensor {key!r} of {n} elements exceeds the limit")
        return dims, n

    def _scatter(
        self, key: str, idx: np.ndarray, values: np.ndarray, dims: tuple[int, ...], n: int
    ) -> np.ndarray:
        if idx.dtype != index_dtype(n) or idx.ndim != 1 or not 0 < idx.size <= n:
            raise MalformedUpdate(f"lora: {key!r} needs 1..{n} {index_dtype(n)} indices")
        if values.dtype != np.float32 or values.shape != idx.shape:
            raise MalformedUpdate(f"lora: {key!r} needs {idx.size} float32 values")
        if int(idx[-1]) >= n or not np.all(idx[1:] > idx[:-1]):
            raise MalformedUpdate(f"lora: indices of {key!r} not strictly increasing below {n}")
        dense = np.zeros(n, dtype=np.float32)
        dense[idx] = values
        return dense.reshape(dims)

    def decode(self, arrays: Arrays) -> Arrays:
        """Rebuild every zero and sparse group as a dense float32 array.

        Raises
        ------
        MalformedUpdate
            For bad shapes, dtypes, lengths, unsorted or out-of-range indices, or tensors beyond
            ``max_elements`` in total.
        """
        zero_groups, sparse_groups = find_groups(arrays, _ZERO), find_groups(arrays, _SPARSE)
        consumed = {b + s for b in zero_groups for s in _ZERO}
        consumed |= {b + s for b in sparse_groups for s in _SPARSE}
        out: Arrays = {k: a for k, a in arrays.items() if k not in consumed}
        budget = self.max_elements
        for base in zero_groups:
            dims, n = self._dims(base, arrays[base + ".lz"], budget)
            budget -= n
            put_new(out, base, np.zeros(dims, dtype=np.float32), self.name)
        for base in sparse_groups:
            dims, n = self._dims(base, arrays[base + ".ls"], budget)
            budget -= n
            dense = self._scatter(base, arrays[base + ".li"], arrays[base + ".lv"], dims, n)
            put_new(out, base, dense, self.name)
        return out
