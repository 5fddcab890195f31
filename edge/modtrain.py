"""Put a generic model in training shape for a :class:`~stamen.edge.modplans.ModulePlan`.

- Every parameter outside the plan gets ``requires_grad=False``. Autograd then records nothing
  until the first op with a trained input, so the frozen prefix keeps no activations, and a linear
  layer with a frozen weight keeps only that (resident) weight: stock autograd saves the input of a
  matrix product only for the weight's gradient.
- A linear weight trained on input features ``S`` gets a parameter ``W[:, S]``; while training,
  that layer's ``forward`` is the lean layer of :mod:`stamen.edge.sparse_autograd`, which keeps
  ``x[..., S]`` instead of ``x``. After each optimizer step ``sync`` writes ``W[:, S]`` back.
- Everything else (LayerNorm, GELU, attention, pooling) is stock autograd: backprop through a
  layer keeps what its ops need for the input gradient even when the layer's weights are frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .modplans import ModulePlan, linear_weights
from .sparse_autograd import LayerConf, sparse_layer

__all__ = ["lean_training"]

_LINEAR = LayerConf("linear", 1, relu=False)


def _lean_forward(
    lin: nn.Linear, w_sel: nn.Parameter, sel: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return sparse_layer(x, lin.weight, lin.bias, w_sel, sel, _LINEAR)

    return forward


@contextmanager
def lean_training(
    model: nn.Module, plan: ModulePlan
) -> Iterator[tuple[list[nn.Parameter], Callable[[], None]]]:
    """Yield ``(trained parameters, sync)`` with ``model`` set up for ``plan`` (see module docstring).

    On exit the linear layers get their own ``forward`` back; ``requires_grad`` flags stay as the
    plan set them.
    """
    named = dict(model.named_parameters())
    chosen = set(named) if plan.full else set(plan.params)
    for name, p in named.items():
        p.requires_grad_(name in chosen)
    linears = linear_weights(model)
    slices: list[tuple[nn.Linear, nn.Parameter, torch.Tensor]] = []
    for wname, chans in plan.channels if not plan.full else ():
        lin = linears[wname]
        sel = torch.tensor(chans, dtype=torch.long)
        w_sel = nn.Parameter(lin.weight.detach().index_select(1, sel).clone())
        slices.append((lin, w_sel, sel))
        lin.forward = _lean_forward(lin, w_sel, sel)  # type: ignore[method-assign,assignment]

    @torch.no_grad()
    def sync() -> None:
        for lin, w_sel, sel in slices:
            lin.weight.index_copy_(1, sel, w_sel)

    try:
        yield [named[n] for n in named if n in chosen] + [w for _, w, _ in slices], sync
    finally:
        for lin, _, _ in slices:
            del lin.forward
