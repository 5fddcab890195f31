"""Plain SGD with optional heavy-ball momentum, without ``torch.optim``.

The update is ``torch.optim.SGD(params, lr, momentum)``'s single-tensor path with dampening 0, no
Nesterov and no weight decay (Sutskever et al., ICML 2013, as PyTorch writes it)::

    b_t = g_t                      (first step)
    b_t = momentum * b_{t-1} + g_t (later steps)
    p_t = p_{t-1} - lr * b_t       (b_t = g_t when momentum = 0)

with the same in-place ops, so the trajectory is bit-identical (pinned by a test). Why not
``torch.optim``: in torch 2.13 constructing any optimizer imports ``torch._dynamo`` (measured here:
1-2 s on a quiet 2-core machine, ~5 s loaded), which a device pays on every
``stamen edge personalize`` and holds in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SGD"]


class SGD:
    """``p -= lr * b`` with momentum buffer ``b`` (see module docstring).

    Parameters
    ----------
    params : sequence of torch.Tensor
        Leaf tensors that require gradients.
    lr : float
        Step size, > 0.
    momentum : float, default 0.0
        Heavy-ball coefficient in [0, 1); 0 keeps no state.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        if not lr > 0 or not 0 <= momentum < 1:
            raise ValueError(f"lr must be > 0 and momentum in [0, 1), got {lr}, {momentum}")
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self._bufs: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``: no zero-filled buffers stay resident)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.momentum:
                buf = self._bufs[i]
                if buf is None:
                    buf = self._bufs[i] = torch.clone(g).detach()
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self.lr)
