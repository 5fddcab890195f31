"""``dense``: plain float32 tensors, the default codec.

Encode casts every floating array to float32 (4 bytes per element on the wire); decode casts
floating arrays back to float32. Lossless for float32 input. Non-float arrays pass through, so
``dense`` composes with any stage.
"""

from __future__ import annotations

import numpy as np

from ..container import WireArray
from ._keys import derive_layout
from .base import Arrays, ArrayStage, Layout, register

__all__ = ["Dense"]


def _as_float32(arrays: Arrays) -> Arrays:
    return {
        key: arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr
        for key, arr in arrays.items()
    }


@register
class Dense(ArrayStage):
    """Float32 pass-through; no params."""

    name = "dense"
    uses_rng = False  # encode is a cast

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Cast floating arrays to float32; others pass through."""
        return _as_float32(arrays)

    def decode(self, arrays: Arrays) -> Arrays:
        """Cast floating arrays to float32; others pass through."""
        return _as_float32(arrays)

    def encoded_layout(self, layout: Layout) -> Layout:
        """Every floating entry becomes float32 of the same shape (exact)."""
        return derive_layout(layout, lambda key, w: {key: WireArray(np.dtype(np.float32), w.shape)})
