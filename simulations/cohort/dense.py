"""Closed-form gradients of a dense stack, for a whole cohort at once (no autograd, no vmap).

The cohort trainer's general path (:mod:`stamen.simulations.cohort.train`) runs the model through
``torch.func.vmap`` and ``torch.autograd.grad``; at the engine benchmark's sizes (MLP 40-64-10, 100
clients, batch 16) that costs ~1.5 ms of Python and dispatch per step against ~0.1 ms of arithmetic.
For the commonest family, a chain of ``nn.Linear`` layers with ReLU/Tanh between them (the
registry's ``mlp`` and ``logreg``), the forward and backward passes are written out here as batched
matrix products over the stacked per-client weights (``W`` is ``(a, out, in)``, ``b`` is
``(a, out)``, activations written ``(a, B, width)`` here and stored feature-major, see :class:`DenseStep`):

- forward: ``z_l = h_{l-1} W_l^T + b_l``, ``h_l = act(z_l)``;
- loss: client ``k``'s mean cross-entropy over its own valid batch entries ``m_k``
  (``sum_j mask_kj * CE_kj / m_k``), exactly what :func:`torch.nn.functional.cross_entropy` with
  ``reduction="mean"`` gives the per-client loop on its (possibly short) batch;
- backward: ``dz_L = (softmax(z_L) - onehot(y)) * mask / m``; ``dW_l = dz_l^T h_{l-1}``,
  ``db_l = sum_j dz_l``, ``dh_{l-1} = dz_l W_l``, ``dz_{l-1} = dh_{l-1} * act'(z_{l-1})`` with
  ``relu' = [h > 0]`` and ``tanh' = 1 - h^2`` (autograd's own formulas).

Each client's gradient is the one autograd computes for that client alone, to float rounding (the
summation order of the matrix products differs); the tests compare both paths and the per-client
loop. Any other structure returns ``None`` from :func:`dense_plan` and keeps the general path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Identity: "identity"}


@dataclass(frozen=True)
class DenseLayer:
    """One ``nn.Linear`` of the chain: its parameters' positions and the activation after it."""

    weight: int  # index of ``<layer>.weight`` in the trainer's parameter list
    bias: int | None  # index of ``<layer>.bias``, None without a bias
    act: str  # "relu", "tanh" or "identity" (the last layer's is always "identity")


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's non-container modules in forward order (nested ``nn.Sequential`` flattened; a
    subclass of it is a leaf, so a custom ``forward`` is never skipped)."""
    return [(n, m) for n, m in model.named_modules() if type(m) is not nn.Sequential]


def dense_plan(model: nn.Module, names: Sequence[str]) -> list[DenseLayer] | None:
    """The chain of ``model`` when it is ``Linear (act Linear)*`` with ``act`` in ReLU/Tanh/Identity
    (a leading ``nn.Flatten`` allowed), its parameters indexed in ``names`` order; else ``None``."""
    if type(model) is not nn.Sequential:  # exact: a subclass may override forward
        return None
    pos, layers = {n: i for i, n in enumerate(names)}, []
    leaves = _leaves(model)
    if leaves and type(leaves[0][1]) is nn.Flatten and leaves[0][1].start_dim == 1:
        leaves = leaves[1:]
    for name, mod in leaves:
        prefix = f"{name}." if name else ""
        if type(mod) is nn.Linear:
            bias = pos.get(prefix + "bias") if mod.bias is not None else None
            layers.append(DenseLayer(pos[prefix + "weight"], bias, "identity"))
        elif type(mod) in ACTIVATIONS and layers and layers[-1].act == "identity":
            layers[-1] = DenseLayer(layers[-1].weight, layers[-1].bias, ACTIVATIONS[type(mod)])
        elif type(mod) is not nn.Identity:
            return None
    if not layers or layers[-1].act != "identity":
        return None  # an activation after the logits is not a dense classifier head
    return layers


class DenseStep:
    """``(params (a, ...) each, x (a, B, ...), y (a, B), weight (a, B)) -> (losses (a,), grads)``:
    every active client's mean batch loss and its gradients, in closed form (``weight`` is ``1 / m``
    on a client's ``m`` valid batch entries, 0 on padding).

    Activations are kept feature-major, ``(a, width, B)``: the products then have the layouts
    MKL's batched GEMM runs fastest at these sizes (the logits ``W h^T`` of a 10-class head took
    2.3x as long batch-major, measured), and the ReLU derivative is torch's own
    ``threshold_backward`` (one fused pass instead of a mask and a multiply)."""

    def __init__(self, layers: list[DenseLayer]) -> None:
        self.layers = layers

    def __call__(
        self, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.no_grad():
            hs, z = self._forward(params, x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2))
            weight = weight.unsqueeze(1)  # (a, 1, B)
            # log-softmax by hand: torch's kernel is ~4x slower on a dimension of ~10 classes
            shifted = z.sub_(z.amax(1, keepdim=True))  # (a, C, B)
            dz = shifted.exp()
            total = dz.sum(1, keepdim=True)  # (a, 1, B)
            picked = shifted.gather(1, y.unsqueeze(1)) - total.log()  # (a, 1, B)
            losses = -(picked * weight).sum(2).squeeze(1)
            dz.div_(total)
            dz.scatter_add_(1, y.unsqueeze(1), torch.full_like(picked, -1.0))
            dz.mul_(weight)
            return losses, self._backward(params, hs, dz)

    def _forward(
        self, params: list[torch.Tensor], h: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each layer's input ``(a, in, B)`` (the last entry is the logits' input) and the logits
        ``(a, C, B)``."""
        hs = []
        for layer in self.layers:
            hs.append(h)
            w = params[layer.weight]
            if layer.bias is None:
                h = torch.bmm(w, h)
            else:
                h = torch.baddbmm(params[layer.bias].unsqueeze(2), w, h)
            if layer.act == "relu":
                h = h.relu_()
            elif layer.act == "tanh":
                h = h.tanh_()
        return hs, h

    def _backward(
        self, params: list[torch.Tensor], hs: list[torch.Tensor], dz: torch.Tensor
    ) -> list[torch.Tensor]:
        grads: list[torch.Tensor] = [torch.empty(0)] * len(params)
        for i in range(len(self.layers) - 1, -1, -1):
            layer, h = self.layers[i], hs[i]
            grads[layer.weight] = torch.bmm(dz, h.transpose(1, 2))
            if layer.bias is not None:
                grads[layer.bias] = dz.sum(2)
            if i == 0:
                break
            dz = torch.bmm(params[layer.weight].transpose(1, 2), dz)
            act = self.layers[i - 1].act  # h is act(z_{i-1}): the derivative is read off h
            if act == "relu":
                dz = torch.ops.aten.threshold_backward(dz, h, 0)
            elif act == "tanh":
                dz.mul_(1 - h * h)
        return grads
