"""``int8(stochastic=true)``: symmetric per-tensor 8-bit quantization.

Per floating array ``b`` with ``m = max|x|``: scale ``s = m / 127`` (float32; 0 for an all-zero
array) and ``q = round(x / s)`` in ``[-127, 127]``, sent as ``b.q`` (int8, same shape) and
``b.qs`` (float32 scalar). Decode is ``q * s`` in float32.

- ``stochastic=true`` (default): ``q = floor(x / s + u)``, ``u ~ U[0, 1)`` from the caller's
  generator, so ``E[q * s] = x`` (unbiased) and ``|q * s - x| < s`` per entry; see QSGD (Alistarh
  et al., NeurIPS 2017) for why unbiased rounding matters when averaging many clients.
- ``stochastic=false``: nearest rounding, ``|q * s - x| <= s / 2``, deterministic but biased.

Wire size is ``n + 4`` bytes per tensor (plus container overhead). Non-float arrays (e.g. top-k
indices) pass through, so ``topk+int8`` quantizes only the kept values.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..container import WireArray
from ..errors import CodecError, MalformedUpdate
from ._keys import derive_layout, find_groups, put_new, split_arrays
from .base import Arrays, ArrayStage, Layout, Scalar, register

__all__ = ["Int8"]

_SUFFIXES = (".q", ".qs")
_LEVELS = np.float32(127.0)
_INF = np.float32(np.inf)
_F32_MAX = float(np.finfo(np.float32).max)
_NORMAL = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32


def _scale(key: str, arr: np.ndarray) -> np.float32:
    """Per-tensor step ``max|x| / 127`` as float32 (rounded up if subnormal).

    Zero only for an all-zero (or empty) tensor.
    """
    amax = np.float32(np.max(np.abs(arr))) if arr.size else np.float32(0.0)
    if not np.isfinite(amax):
        raise CodecError(f"int8: tensor {key!r} has non-finite values")
    scale = np.float32(amax / _LEVELS)
    # A subnormal step has few significant bits, so max|x| / s could land far above 127 and
    # clipping would add real error: round such a step up. (For normal steps the excess is at
    # most one ulp and clipping costs < 1e-7 relative.)
    while scale < _NORMAL and float(amax) > 127.0 * float(scale):
        scale = np.nextafter(scale, _INF)
    return scale


@register
class Int8(ArrayStage):
    """Symmetric int8 quantization with a float32 per-tensor scale.

    Parameters
    ----------
    stochastic : bool, default True
        Unbiased randomized rounding (True) or round-to-nearest (False).
    """

    name = "int8"
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({"stochastic": True})

    def _quantize(self, arr: np.ndarray, scale: np.float32, rng: np.random.Generator) -> np.ndarray:
        if scale == 0:
            return np.zeros(arr.shape, dtype=np.int8)
        y = arr.astype(np.float32, copy=False) / scale  # same shape, values in [-127, 127]
        if not self.params["stochastic"]:
            return np.clip(np.rint(y), -127, 127).astype(np.int8)
        # floor(y + u), u ~ U[0, 1): rounds up with probability frac(y), so E[q] = y
        return np.clip(np.floor(y + rng.random(y.shape, dtype=np.float32)), -127, 127).astype(np.int8)

    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Replace each floating array ``b`` by ``b.q`` (int8) and ``b.qs`` (float32 scalar)."""

        def split(key: str, arr: np.ndarray) -> dict[str, np.ndarray]:
            scale = _scale(key, arr)
            return {".q": self._quantize(arr, scale, rng), ".qs": np.array(scale, dtype=np.float32)}

        return split_arrays(arrays, self.name, _SUFFIXES, split)

    def encoded_layout(self, layout: Layout) -> Layout:
        """Each floating ``b`` becomes ``b.q`` (int8, same shape) and ``b.qs`` (float32 scalar)."""

        def quantized(key: str, w: WireArray) -> Layout:
            return {
                key + ".q": WireArray(np.dtype(np.int8), w.shape),
                key + ".qs": WireArray(np.dtype(np.float32), ()),
            }

        return derive_layout(layout, quantized)

    @staticmethod
    def _dequantize(key: str, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
        if q.dtype != np.int8 or (q.size and int(q.min()) < -127):
            raise MalformedUpdate(f"int8: {key!r} values must be int8 in [-127, 127]")
        if scale.dtype != np.float32 or scale.shape != ():
            raise MalformedUpdate(f"int8: scale of {key!r} must be a float32 scalar")
        step = np.float32(scale)
        if not 0 <= 127.0 * float(step) <= _F32_MAX:  # rejects NaN and steps where 127 * s overflows
            raise MalformedUpdate(f"int8: scale of {key!r} must be finite and >= 0")
        return np.multiply(q, step, dtype=np.float32)  # one float32 temporary, not two

    def decode(self, arrays: Arrays) -> Arrays:
        """Dequantize every ``b.q``/``b.qs`` pair into float32 ``b``.

        Raises
        ------
        MalformedUpdate
            If a pair has wrong dtypes or shapes, a value of -128, or a negative or
            non-finite scale.
        """
        groups = find_groups(arrays, _SUFFIXES)
        consumed = {base + s for base in groups for s in _SUFFIXES}
        out: Arrays = {k: a for k, a in arrays.items() if k not in consumed}
        for base in groups:
            dense = self._dequantize(base, arrays[base + ".q"], arrays[base + ".qs"])
            put_new(out, base, dense, self.name)
        return out
