"""Frozen linear and embedding layers held in fp16 or int8 and dequantized on the fly.

During sparse personalization most weights never change. Keeping them in float32 costs 4 bytes
per weight for the whole run; :class:`FrozenLinear` keeps an ``nn.Linear``'s frozen weight as

- ``int8``: symmetric per-output-row quantization, ``W ≈ q · s[:, None]`` with
  ``s_o = max_i |W_oi| / 127`` (1 byte per weight plus one float32 scale per row; the scheme of
  LLM.int8()'s vector-wise quantization without outliers, Dettmers et al., NeurIPS 2022, and of
  TinyEngine's int8 frozen weights, Lin et al., NeurIPS 2022), or
- ``fp16``: IEEE half precision (2 bytes per weight),

and rebuilds the float32 matrix only inside its own forward and backward (a transient of one
layer, freed right after). :class:`FrozenEmbedding` does the same for an ``nn.Embedding`` table
(one scale per row), dequantizing only the rows a batch looks up. The linear layer's autograd
function saves nothing but the (resident) quantized weight: ``∂L/∂x = g · W`` needs ``W`` only,
and a frozen weight needs no input for a weight gradient. The bias stays a float32 parameter
under its usual name, so bias-training plans (BitFit) still work.

Accuracy cost: the forward uses the dequantized weight; the quantization error per weight is at
most ``s_o / 2`` (int8) or a relative 2^-11 (fp16). The trained tensors are float32 and are served
on top of the float32 global weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KINDS", "FrozenEmbedding", "FrozenLinear", "dequantize", "quantize_rows"]

KINDS = ("fp16", "int8")  # quantized kinds; "fp32" keeps float32 (a row subset of a table, say)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}


def _quantize_block(w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if kind != "int8":
        return w.to(_DTYPES[kind]), None
    amax = w.abs().amax(dim=1)  # (rows,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def _slicer(tensor: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    def read(a: int, b: int) -> torch.Tensor:
        return tensor[a:b]

    return read


def quantize_rows(
    weight: torch.Tensor | Callable[[int, int], torch.Tensor],
    kind: str,
    shape: tuple[int, int] | None = None,
    block_bytes: int = 1 << 20,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(q, scale)`` of a float32 ``(out, in)`` weight; ``scale`` is None except for ``int8``
    (``fp32`` only copies).

    Rows are processed in blocks of about ``block_bytes`` of float32, so the temporaries stay
    small; ``weight`` may be a function ``(start, stop) -> rows`` (with ``shape`` given) that
    reads the rows from a file, so the float32 tensor never exists whole.

    Raises
    ------
    ValueError
        For an unknown ``kind`` (``fp16`` or ``int8``).
    """
    if kind not in _DTYPES:
        raise ValueError(f"frozen weight kind must be one of {tuple(_DTYPES)}, got {kind!r}")
    if isinstance(weight, torch.Tensor):
        shape = (weight.shape[0], weight.shape[1])
        read = _slicer(weight.detach())
    else:
        assert shape is not None, "shape is needed with a row reader"
        read = weight
    rows, cols = shape
    q = torch.empty(shape, dtype=_DTYPES[kind])
    scale = torch.empty(rows) if kind == "int8" else None
    step = max(1, block_bytes // (4 * max(cols, 1)))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        qb, sb = _quantize_block(read(a, b), kind)
        q[a:b] = qb
        if scale is not None and sb is not None:
            scale[a:b] = sb
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The float32 ``(out, in)`` weight (a new tensor, except for float32 ``q``; int8 promotes in
    the multiply)."""
    return q.float() if scale is None else q * scale[:, None]


def _kind(q: torch.Tensor) -> str:
    return {v: k for k, v in _DTYPES.items()}[q.dtype]


class _FrozenLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` with ``W = dequantize(q, scale)`` frozen (gradients for ``x`` and ``b``)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(q, scale)  # resident buffers: references, no copies
        ctx.has_bias = bias is not None
        return F.linear(x, dequantize(q, scale), bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, torch.Tensor | None]:
        q, scale = ctx.saved_tensors
        gx = g @ dequantize(q, scale) if ctx.needs_input_grad[0] else None  # (..., in)
        gb = g.reshape(-1, g.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return gx, None, None, gb


class FrozenLinear(nn.Module):
    """A frozen linear layer stored quantized (see module docstring).

    Parameters
    ----------
    q, scale : torch.Tensor
        :func:`quantize_rows` of the float32 ``(out, in)`` weight (``scale`` None for fp16).
    bias : nn.Parameter or None
        Kept as is (registered under the name ``bias``).
    """

    qweight: torch.Tensor
    scale: torch.Tensor | None

    def __init__(self, q: torch.Tensor, scale: torch.Tensor | None, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.kind = _kind(q)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = bias

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: nn.Parameter | None, kind: str) -> FrozenLinear:
        """Quantize a float32 ``(out, in)`` weight as ``kind`` (``int8`` or ``fp16``)."""
        return cls(*quantize_rows(weight, kind), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in) -> (..., out)``."""
        out: torch.Tensor = _FrozenLinearFn.apply(x, self.qweight, self.scale, self.bias)
        return out

    def weight_bytes(self) -> int:
        """Bytes the frozen weight occupies (quantized values plus scales)."""
        scale = self.scale
        extra = 0 if scale is None else scale.numel() * scale.element_size()
        return int(self.qweight.numel() * self.qweight.element_size() + extra)


class FrozenEmbedding(nn.Module):
    """A frozen embedding table stored quantized, one scale per row (see module docstring).

    Parameters
    ----------
    q, scale : torch.Tensor
        :func:`quantize_rows` of the float32 ``(num, dim)`` table, or of the rows ``rows`` of it.
    rows : torch.Tensor or None
        The ids whose rows ``q`` holds, in order (None: all ``num``); looking up any other id
        raises ``ValueError``. A personalization run knows the token ids of its local data in
        advance, so it need not hold the rest of the vocabulary.
    num_embeddings : int or None
        Size of the full table (needed with ``rows``).
    """

    qweight: torch.Tensor
    scale: torch.Tensor | None
    index: torch.Tensor | None

    def __init__(
        self,
        q: torch.Tensor,
        scale: torch.Tensor | None,
        rows: torch.Tensor | None = None,
        num_embeddings: int | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = q.shape[0] if rows is None else int(num_embeddings or 0)
        self.embedding_dim, self.kind = q.shape[1], _kind(q)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        index = None
        if rows is not None:
            index = torch.full((self.num_embeddings,), -1, dtype=torch.int32)
            index[rows] = torch.arange(len(rows), dtype=torch.int32)
        self.register_buffer("index", index)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, kind: str) -> FrozenEmbedding:
        """Quantize a float32 ``(num, dim)`` table as ``kind`` (``int8``, ``fp16`` or ``fp32``)."""
        return cls(*quantize_rows(weight, kind))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (...) -> (..., dim)`` float32; only the looked-up rows are dequantized.

        Raises
        ------
        ValueError
            If an id is not among the rows kept.
        """
        local = ids if self.index is None else self.index[ids].long()
        if self.index is not None and bool((local < 0).any()):
            raise ValueError("an id outside the rows kept for this run was looked up")
        rows = self.qweight[local]  # (..., dim)
        return rows.float() if self.scale is None else rows * self.scale[local].unsqueeze(-1)

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized table (a new float32 tensor: for code that slices ``.weight``).

        Raises
        ------
        ValueError
            If only some rows are kept.
        """
        if self.index is not None:
            raise ValueError("this frozen embedding keeps only some rows; it has no whole weight")
        return dequantize(self.qweight, self.scale)

    def weight_bytes(self) -> int:
        """Bytes the frozen table occupies (values, scales and the row index)."""
        tensors = [t for t in (self.qweight, self.scale, self.index) if t is not None]
        return int(sum(t.numel() * t.element_size() for t in tensors))
