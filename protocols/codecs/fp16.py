"""``fp16``: half-precision floats (2 bytes per element).

Encode casts float32/float64 arrays to IEEE float16 (round to nearest even); decode casts float16
arrays back to float32. Relative error <= 2**-11 per entry for normal values; values beyond the
float16 range (|x| > 65504) are refused rather than silently sent as infinity.
"""

from __future__ import annotations

import numpy as np

from ..container import WireArray
from ..errors import CodecError
from ._keys import derive_layout
from .base import Arrays, ArrayStage, Layout, register

__all__ = ["Fp16"]

_FP16_MAX = float(np.finfo(np.float16).max)


@register
class Fp16(ArrayStage):
    """Float32 -> float16 cast; no params."""

    name = "fp16"
    uses_rng = False  # encode is a cast

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Cast float32/float64 arrays to float16.

        Raises
        ------
        CodecError
            If a finite value overflows float16 (|x| > 65504 after rounding).
        """
        out: Arrays = {}
        for key, arr in arrays.items():
            if arr.dtype in (np.float32, np.float64):
                with np.errstate(over="ignore"):
                    half = arr.astype(np.float16)
                if arr.size and np.isinf(half).any() and np.isfinite(arr).all():
                    raise CodecError(
                        f"fp16: tensor {key!r} exceeds the float16 range ±{_FP16_MAX:g}; use dense/int8"
                    )
                out[key] = half
            else:
                out[key] = arr
        return out

    def encoded_layout(self, layout: Layout) -> Layout:
        """float32/float64 entries become float16 of the same shape (exact)."""

        def half(key: str, w: WireArray) -> Layout:
            return {key: WireArray(np.dtype(np.float16), w.shape) if w.dtype.itemsize > 2 else w}

        return derive_layout(layout, half)

    def decode(self, arrays: Arrays) -> Arrays:
        """Cast float16 arrays to float32; others pass through."""
        return {
            key: arr.astype(np.float32) if arr.dtype == np.float16 else arr for key, arr in arrays.items()
        }
