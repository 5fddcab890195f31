"""Sparse-backprop plans: what trains, and the memory it costs (TinyEngine's memory model).

This module plans the EdgeNet MLP/CNN family layer by layer; any other torch model (MiniLM,
transformers) is planned by :mod:`stamen.edge.modplans` / :mod:`stamen.edge.modbudget`.

Plan texts (``stamen edge personalize --plan``):

- ``full``: every parameter, stock autograd (the anchor);
- ``bias``: the biases of every layer, through the lean path (:mod:`stamen.edge.sparse_autograd`);
- ``last_k=K``: weights and biases of the last ``K`` layers (K >= 1); earlier layers run without
  autograd;
- ``channels=R``: biases of every layer, plus the weights of the last ``ceil(L/2)`` layers on the
  fraction ``R`` in (0, 1] of their input channels with the largest ``‖W[:, c]‖₂`` ("magnitude+");
- ``budget=SIZE`` (``2MB``, ``512kB``, ``1MiB``, ``40000``): the most useful biases and channel
  groups whose training memory fits ``SIZE`` bytes (:mod:`stamen.edge.budget`).

Memory model (bytes; batch ``B``; optimizer state counted as ``opt`` extra copies of each
gradient, 0 for plain SGD, 1 with momentum), following Lin et al. 2022 §3.3 / ``partial_backward``:
for every layer ``i`` from the first trained layer to the head, its bit-packed ReLU mask
``ceil(B · out_i · P_i / 8)`` bytes (``P`` = output positions); a trained bias
``4 · out_i · (1 + opt)``; a weight trained on ``k`` input channels ``4 · B · k · Q_i`` (saved
input, ``Q`` = input positions) plus ``4 · out_i · k · K_i · (1 + opt)`` (``K`` = kernel area);
and the loss ``B · (4 · classes + 8) + 4``.
Unlike TinyEngine (int8 activations and weights) everything here is float32.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .arch import EdgeNet

__all__ = ["LayerInfo", "LayerPlan", "PlanSpec", "SparsePlan", "layer_infos", "parse_plan", "parse_size"]

_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?")
_UNITS = {
    None: 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
}


@dataclass(frozen=True)
class PlanSpec:
    """A parsed plan text: ``kind`` in full/bias/last_k/channels/budget and its ``value``."""

    kind: str
    value: float = 0.0

    def text(self) -> str:
        """Canonical text, e.g. ``last_k=2``."""
        if self.kind in ("full", "bias"):
            return self.kind
        value = int(self.value) if self.kind in ("last_k", "budget") else self.value
        return f"{self.kind}={value}"


def parse_size(text: str) -> int:
    """Bytes in ``text`` such as ``2MB`` (10^6), ``1MiB`` (2^20), ``512kB`` or ``40000``."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"size {text!r} must look like 2MB, 512kB, 1MiB or 40000")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_plan(text: str) -> PlanSpec:
    """Parse a plan text (see module docstring).

    Raises
    ------
    ValueError
        For an unknown plan or a value out of range (naming the plan and the allowed range).
    """
    name, _, value = text.strip().partition("=")
    if name in ("full", "bias") and not value:
        return PlanSpec(name)
    if name == "last_k" and value.isdigit() and int(value) >= 1:
        return PlanSpec("last_k", int(value))
    if name == "channels":
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if 0 < ratio <= 1:
            return PlanSpec("channels", ratio)
        raise ValueError(f"plan channels=R needs R in (0, 1], got {value!r}")
    if name == "budget":
        size = parse_size(value)
        if size < 1:
            raise ValueError("plan budget=SIZE needs SIZE >= 1 byte")
        return PlanSpec("budget", size)
    raise ValueError(
        f"plan {text!r} must be full, bias, last_k=K (K >= 1), channels=R (0 < R <= 1) or budget=SIZE"
    )


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one layer for the memory model (positions per sample)."""

    kind: str
    in_ch: int
    out_ch: int
    kernel: int
    in_pos: int
    out_pos: int
    stride: int
    relu: bool


def layer_infos(model: EdgeNet) -> list[LayerInfo]:
    """Shapes of every layer of ``model`` (spatial sizes follow from stride 3×3 / padding 1)."""
    spec, out = model.spec, []
    h, w = (spec.input_shape[1], spec.input_shape[2]) if spec.channels else (1, 1)
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        relu = i < last
        if isinstance(layer, torch.nn.Conv2d):
            stride = int(layer.stride[0])
            h2, w2 = (h - 1) // stride + 1, (w - 1) // stride + 1
            out.append(
                LayerInfo("conv", layer.in_channels, layer.out_channels, 9, h * w, h2 * w2, stride, relu)
            )
            h, w = h2, w2
        else:
            assert isinstance(layer, torch.nn.Linear)
            out.append(LayerInfo("linear", layer.in_features, layer.out_features, 1, 1, 1, 1, relu))
    return out


@dataclass(frozen=True)
class LayerPlan:
    """What trains in one layer: its bias, and its weight on input channels ``channels``."""

    bias: bool = False
    channels: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        """True if anything in the layer trains."""
        return self.bias or bool(self.channels)


@dataclass(frozen=True)
class SparsePlan:
    """A resolved plan: per-layer choices (``full`` uses stock autograd on everything)."""

    text: str
    layers: tuple[LayerPlan, ...]
    full: bool = False

    @property
    def first(self) -> int:
        """Index of the first layer that trains (backprop stops there)."""
        return next((i for i, lp in enumerate(self.layers) if lp.active), len(self.layers))

    def trainable_elements(self, infos: list[LayerInfo]) -> int:
        """Number of trained scalars."""
        return sum(
            (info.out_ch if lp.bias else 0) + info.out_ch * len(lp.channels) * info.kernel
            for lp, info in zip(self.layers, infos, strict=True)
        )

    def memory_bytes(self, infos: list[LayerInfo], batch: int, opt_copies: int = 0) -> int:
        """Training memory by the model in the module docstring (sparse plans)."""
        # loss: log-softmax output, int64 targets and nll_loss's float32 total weight
        total = batch * (4 * infos[-1].out_ch + 8) + 4
        for lp, info in list(zip(self.layers, infos, strict=True))[self.first :]:
            total += -(-batch * info.out_ch * info.out_pos // 8) if info.relu else 0
            total += 4 * info.out_ch * (1 + opt_copies) if lp.bias else 0
            k = len(lp.channels)
            total += 4 * batch * k * info.in_pos + 4 * info.out_ch * k * info.kernel * (1 + opt_copies)
        return total


def magnitude_order(weight: torch.Tensor) -> list[int]:
    """Input channels by decreasing ``‖W[:, c]‖₂`` (TinyEngine's ``magnitude+``; ties by index)."""
    norms = weight.detach().transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
    return sorted(range(weight.shape[1]), key=lambda c: (-float(norms[c]), c))


def resolve_fixed(spec: PlanSpec, model: EdgeNet) -> SparsePlan:
    """Resolve a plan that needs no data (full, bias, last_k, channels) for ``model``."""
    n = len(model.layers)
    if spec.kind == "full":
        return SparsePlan("full", tuple(LayerPlan(True, tuple(range(_in(model, i)))) for i in range(n)), True)
    if spec.kind == "bias":
        return SparsePlan("bias", tuple(LayerPlan(bias=True) for _ in range(n)))
    if spec.kind == "last_k":
        k = int(spec.value)
        if k > n:
            raise ValueError(f"plan last_k={k}: the model has only {n} layers")
        layers = [
            LayerPlan(True, tuple(range(_in(model, i)))) if i >= n - k else LayerPlan() for i in range(n)
        ]
        return SparsePlan(spec.text(), tuple(layers))
    if spec.kind == "channels":
        start = n - math.ceil(n / 2)
        layers = []
        for i in range(n):
            keep = max(1, math.ceil(spec.value * _in(model, i))) if i >= start else 0
            chans = tuple(sorted(magnitude_order(model.weight(i))[:keep]))
            layers.append(LayerPlan(True, chans))
        return SparsePlan(spec.text(), tuple(layers))
    raise ValueError(f"plan {spec.text()!r} needs data to resolve (use stamen.edge.budget)")


def _in(model: EdgeNet, i: int) -> int:
    return int(model.weight(i).shape[1])
