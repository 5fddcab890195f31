"""Lean autograd for sparse backprop: a frozen layer keeps only what its trainable parts need.

Stock PyTorch autograd saves a convolution's input even when its weight is frozen, and ReLU saves
its float output, so bias-only training keeps about as many activations as full backprop
(research/edge.md §3.1). TinyEngine and PockEngine prune these saves at compile time (Lin et al.,
"On-Device Training Under 256KB Memory", NeurIPS 2022, §3.3 sparse layer/tensor update; Zhu et
al., "PockEngine", MICRO 2023, §3 backward-graph pruning). :class:`SparseLayer` does the same for
one ``conv3×3``/``linear`` (+ ReLU) layer, as one fused ``autograd.Function``. A ``linear`` input
may have leading dimensions (``(B, L, C_in)`` in a transformer); its channels are the last axis:

- always saved: the ReLU mask ``y > 0`` bit-packed, 8 elements per byte (TinyEngine's binary
  mask), and the frozen weight itself, which is resident anyway (a reference, no copy);
- only if the weight trains on input channels ``S``: the input restricted to them,
  ``x[:, S]`` (``|S| / C_in`` of the input);
- backward: ``g = ∂L/∂y ⊙ mask``; ``∂L/∂b = Σ g``; ``∂L/∂W[:, S] = conv_weight(x[:, S], g)``;
  ``∂L/∂x = conv_input(W, g)`` only when an earlier layer trains.

Gradients equal those of stock autograd on the same layer (tested against it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

__all__ = ["LayerConf", "SparseLayer", "pack_bits", "sparse_layer", "unpack_bits"]

_SHIFTS = torch.arange(8, dtype=torch.uint8)  # bit i of a byte holds element 8 k + i


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ``ceil(numel / 8)`` bytes (little-endian bit order)."""
    flat = mask.reshape(-1)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) << _SHIFTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a bool tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    bits = (packed.unsqueeze(1) >> _SHIFTS) & 1  # (bytes, 8)
    return bits.reshape(-1)[:n].reshape(shape).bool()


@dataclass(frozen=True)
class LayerConf:
    """Static description of one layer: ``conv`` (3×3, given stride, padding 1) or ``linear``."""

    kind: str
    stride: int = 1
    relu: bool = True


def _forward_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, conf: LayerConf) -> torch.Tensor:
    if conf.kind == "conv":
        return F.conv2d(x, w, b, stride=conf.stride, padding=1)
    return F.linear(x, w, b)


class SparseLayer(torch.autograd.Function):
    """``y = relu?(op(x, W, b))`` with trainable ``b`` and/or ``W[:, S]`` (see module docstring).

    Inputs: ``x``; ``weight`` (frozen, already holding the current ``W[:, S]`` values); ``bias``
    (or None);
    ``w_sel`` (the trainable slice ``W[:, S]`` or None); ``sel`` (LongTensor ``S`` or None);
    ``conf`` (:class:`LayerConf`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        w_sel: torch.Tensor | None,
        sel: torch.Tensor | None,
        conf: LayerConf,
    ) -> torch.Tensor:
        y = _forward_op(x, weight, bias, conf)
        mask = None
        if conf.relu:
            mask = pack_bits(y > 0)  # 1 bit per element instead of the 4-byte ReLU output
            y = y.relu_()
        x_sel = None
        if w_sel is not None and sel is not None:
            axis = 1 if conf.kind == "conv" else -1  # channel axis
            x_sel = x if sel.numel() == x.shape[axis] else x.index_select(axis, sel)  # |S| channels
        ctx.save_for_backward(weight, mask, x_sel, sel)
        ctx.conf, ctx.x_shape, ctx.y_shape = conf, tuple(x.shape), tuple(y.shape)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, mask, x_sel, sel = ctx.saved_tensors
        conf: LayerConf = ctx.conf
        g = gy * unpack_bits(mask, ctx.y_shape) if mask is not None else gy  # (B, out, ...)
        need_x, _, need_b, need_w, _, _ = ctx.needs_input_grad
        gx = gb = gw = None
        conv = conf.kind == "conv"
        if need_x:
            gx = conv2d_input(ctx.x_shape, weight, g, stride=conf.stride, padding=1) if conv else g @ weight
        g2 = g if conv else g.reshape(-1, g.shape[-1])  # linear: (tokens, out)
        if need_b:
            gb = g.sum(dim=(0, 2, 3)) if conv else g2.sum(dim=0)
        if need_w and x_sel is not None:
            shape = (weight.shape[0], sel.numel(), *weight.shape[2:])
            if conv:
                gw = conv2d_weight(x_sel, shape, g, stride=conf.stride, padding=1)
            else:
                gw = g2.t() @ x_sel.reshape(-1, x_sel.shape[-1])
        return gx, None, gb, gw, None, None


def sparse_layer(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    w_sel: torch.Tensor | None,
    sel: torch.Tensor | None,
    conf: LayerConf,
) -> torch.Tensor:
    """Typed wrapper of ``SparseLayer.apply`` (see :class:`SparseLayer`)."""
    out: torch.Tensor = SparseLayer.apply(x, weight, bias, w_sel, sel, conf)
    return out
