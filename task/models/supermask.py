"""Supermask layers for FRL: frozen random signed-constant weights, trainable per-edge scores.

Mozaffari, Shejwalkar and Houmansadr, "Every Vote Counts: Ranking-Based Training of Federated
Learning to Resist Poisoning Attacks" (USENIX Security 2023; arXiv 2110.04350 "FRL"), Section 4,
built on edge-popup (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
CVPR 2020, Algorithm 1). Ported from the official code (SPIN-UMass/FRL @ 4cf2550,
``models/modules.py``, ``models/module_util.py``, ``models/init.py``):

- weights ``W`` are frozen: ``W = sign(w0) * gain / sqrt(fan_in)`` ("signed constant"), ``w0`` the
  layer's default init, ``gain = sqrt(2)`` (ReLU); no biases;
- scores ``S`` (same shape as ``W``) are the only trainable tensor, initialised with
  ``kaiming_uniform(a=sqrt(5))``;
- forward: mask ``M = TopK(|S|, k)`` keeps the ``k`` fraction (``sparsity`` in the code, default
  0.5) of edges with the largest ``|S|``; the layer computes with ``W * M``; the gradient of ``M``
  goes straight through to ``|S|`` (straight-through estimator), hence ``sign(S) * g`` to ``S``.

Choice between ambiguous versions: the mask uses ``|S|`` (edge-popup's ``GetSubnet`` on
``scores.abs()``, as the official FRL code does), while rankings and votes use the **signed**
scores (``Find_rank`` sorts ``scores`` itself). The effective subnet after a vote is therefore
"both tails of the ranking" (see ``/work/shared/research/papers.md`` FRL pitfalls).

The state dict of a :class:`MaskedLinear` is ``weight`` (frozen) then ``scores``; only names
ending in ``scores`` are ranked by the ``frl`` trainer and voted on by the ``frl`` rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stamen.task.models.registry import register_model

SCORES_SUFFIX = "scores"
DEFAULT_KEEP = 0.5  # FRL args.sparsity: fraction of edges KEPT per layer


class _TopKAbs(torch.autograd.Function):
    """Edge-popup ``GetSubnet``: 0/1 mask of the top-``keep`` fraction of ``|scores|``."""

    @staticmethod
    def forward(ctx: Any, magnitudes: torch.Tensor, keep: float) -> torch.Tensor:
        flat = magnitudes.flatten()
        dropped = int((1.0 - keep) * flat.numel())  # the code's j = int((1 - k) * numel)
        order = torch.sort(flat, stable=True).indices
        mask = torch.ones_like(flat)
        mask[order[:dropped]] = 0.0
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None  # straight-through


def kept_edges(n: int, keep: float) -> int:
    """Edges a layer of ``n`` edges keeps: ``n - int((1 - keep) * n)`` (the code's rounding)."""
    return n - int((1.0 - keep) * n)


class MaskedLinear(nn.Linear):
    """Linear layer without bias whose effective weight is ``W * TopK(|S|, keep)``.

    Parameters
    ----------
    in_features, out_features : int
        Layer sizes (>= 1).
    keep : float, default 0.5
        Fraction of edges kept by the mask, in (0, 1].
    """

    def __init__(self, in_features: int, out_features: int, keep: float = DEFAULT_KEEP) -> None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        super().__init__(in_features, out_features, bias=False)  # draws w0 (kaiming_uniform a=sqrt5)
        scores = torch.empty_like(self.weight)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5))  # module_util.mask_init
        self.scores = nn.Parameter(scores)
        gain = nn.init.calculate_gain("relu")
        with torch.no_grad():  # init.signed_constant, fan_in mode
            self.weight.copy_(self.weight.sign() * (gain / math.sqrt(in_features)))
        self.weight.requires_grad_(False)
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ (W * M).T`` with the straight-through mask ``M`` of ``|scores|``."""
        mask = _TopKAbs.apply(self.scores.abs(), self.keep)
        return F.linear(x, self.weight * mask)


class SupermaskMLP(nn.Module):
    """``input -> [MaskedLinear, ReLU] * len(hidden) -> MaskedLinear -> logits`` (no biases).

    The MLP analogue of the official code's LeNet, whose fully connected part is masked 1x1
    convolutions without biases or batch norm.
    """

    def __init__(self, input_dim: int, num_classes: int, hidden: Sequence[int], keep: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [MaskedLinear(width, h, keep), nn.ReLU()]
            width = h
        layers.append(MaskedLinear(width, num_classes, keep))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)``."""
        return self.net(x)


@register_model("supermask_mlp")
def supermask_mlp(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """FRL supermask MLP with the code's default kept fraction 0.5 (``args.sparsity``)."""
    return SupermaskMLP(input_dim, num_classes, hidden, DEFAULT_KEEP)


def is_score_tensor(name: str) -> bool:
    """True for the trainable score tensors (state-dict names ending in ``scores``)."""
    return name == SCORES_SUFFIX or name.endswith("." + SCORES_SUFFIX)


def edge_ranking(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """FRL ``Find_rank``: edge indices sorted by ascending **signed** score, ``(n,)`` int64.

    ``ranking[j]`` is the flat index of the edge at rank ``j``; the last entry is the edge with the
    highest score. Ties (measure zero for trained float scores) go to the lower index (stable sort;
    ``torch.sort`` in the code is not guaranteed stable).
    """
    flat = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    return np.argsort(flat.reshape(-1), kind="stable").astype(np.int64)
