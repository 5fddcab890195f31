"""The edge model family: small MLPs and CNNs built from an architecture spec
(:mod:`stamen.edge.archspec`).

An :class:`EdgeNet` is a flat list of layers in ``self.layers``: 3×3 convolutions (padding 1,
ReLU), a global mean pool after the last convolution, fully connected ReLU layers, and a linear
head. ``state_dict`` names are ``layers.<i>.weight`` / ``layers.<i>.bias``. This fixed structure
is what lets the sparse-backprop planner know, as TinyEngine's compiler does, exactly which
activations each layer must keep for backward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .archspec import ARCH_KEY, ArchSpec, parse_arch

__all__ = ["ARCH_KEY", "ArchSpec", "EdgeNet", "build_model", "parse_arch"]


class EdgeNet(nn.Module):
    """Convs (3×3, padding 1, ReLU) -> global mean pool -> ReLU linears -> linear head.

    Parameters
    ----------
    spec : ArchSpec
        Architecture; inputs of shape ``(batch, prod(input_shape))`` or ``(batch, *input_shape)``.
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.input_shape[0]
        for out, stride in zip(spec.channels, spec.strides, strict=True):
            layers.append(nn.Conv2d(width, out, 3, stride=stride, padding=1))
            width = out
        if not spec.channels:
            width = math.prod(spec.input_shape)
        for out in (*spec.hidden, spec.classes):
            layers.append(nn.Linear(width, out))
            width = out
        self.layers = nn.ModuleList(layers)
        self.num_convs = len(spec.channels)

    def layer(self, i: int) -> nn.Conv2d | nn.Linear:
        """Layer ``i`` (typed)."""
        layer = self.layers[i]
        assert isinstance(layer, (nn.Conv2d, nn.Linear))
        return layer

    def weight(self, i: int) -> torch.Tensor:
        """Weight of layer ``i``: ``(out, in, 3, 3)`` or ``(out, in)``."""
        return self.layer(i).weight

    def bias(self, i: int) -> torch.Tensor:
        """Bias of layer ``i``: ``(out,)``."""
        bias = self.layer(i).bias
        assert bias is not None
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, classes)``."""
        x = x.reshape(-1, *self.spec.input_shape)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
            if i == self.num_convs - 1:
                x = x.mean(dim=(2, 3))  # (batch, channels): global mean pool
        return x


def build_model(arch: ArchSpec | Mapping[str, Any] | str, *, seed: int = 0) -> EdgeNet:
    """Build an :class:`EdgeNet` with deterministic initial weights (global RNG untouched)."""
    spec = arch if isinstance(arch, ArchSpec) else parse_arch(arch)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return EdgeNet(spec)
