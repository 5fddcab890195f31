"""SGD and Adam for one client's parameters: step for step what ``torch.optim`` computes on the CPU.

Why not ``torch.optim`` itself: every ``torch.optim`` step goes through a ``torch._dynamo``
guard, and the first one imports the compiler stack (~1 s, ``python -X importtime``), which the
local trainers never use. Each simulation run, each worker process and each device daemon paid it
once, before its first update. These classes compute the same updates with the same tensor
operations, in the same order, as ``torch.optim``'s single-tensor implementations (its path for CPU
tensors), so the results are the same to the last bit on the same machine (``tests/client/
test_local_optim.py`` checks both against ``torch.optim``). DP-SGD keeps ``torch.optim``: opacus
wraps a real optimizer.

The rules are ``torch.optim.SGD(lr, momentum, weight_decay)`` (``dampening = 0``, no Nesterov:
``b <- mu b + g; p <- p - lr b`` with ``b_1 = g_1``; Sutskever et al., ICML 2013) and
``torch.optim.Adam(lr, weight_decay)`` (Kingma and Ba, ICLR 2015; betas 0.9, 0.999, eps 1e-8, L2
weight decay added to the gradient). :mod:`stamen.simulations.cohort.optim` is their stacked
counterpart for a whole cohort.
"""

from __future__ import annotations

import torch

from stamen.task.spec import TrainSpec

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults


class _Local:
    """The parameters an optimizer steps, and ``zero_grad`` as ``torch.optim``'s."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = list(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``set_to_none`` is accepted for ``torch.optim``'s signature)."""
        del set_to_none
        for p in self.params:
            p.grad = None


class LocalSGD(_Local):
    """``torch.optim.SGD(params, lr, momentum, weight_decay)``; parameters without a gradient are
    skipped, as there."""

    def __init__(self, params: list[torch.Tensor], spec: TrainSpec) -> None:
        super().__init__(params)
        self.lr, self.momentum, self.wd = spec.lr, spec.momentum, spec.weight_decay
        self.bufs: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step on every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.wd != 0:
                grad = grad.add(p, alpha=self.wd)
            if self.momentum != 0:
                buf = self.bufs[i]
                if buf is None:
                    buf = self.bufs[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-self.lr)


class LocalAdam(_Local):
    """``torch.optim.Adam(params, lr, weight_decay)``; each parameter counts its own steps (one
    without a gradient neither moves nor counts), as there."""

    def __init__(self, params: list[torch.Tensor], spec: TrainSpec) -> None:
        super().__init__(params)
        self.lr, self.wd = spec.lr, spec.weight_decay
        self.steps = [0] * len(self.params)
        self.m: list[torch.Tensor | None] = [None] * len(self.params)
        self.v: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            m, v = self.m[i], self.v[i]
            if m is None or v is None:
                m = self.m[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = self.v[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.steps[i] += 1
            step = float(self.steps[i])
            grad = p.grad if self.wd == 0 else p.grad.add(p, alpha=self.wd)
            m.lerp_(grad, 1 - _BETA1)
            v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
            step_size = self.lr / (1 - _BETA1**step)
            denom = (v.sqrt() / (1 - _BETA2**step) ** 0.5).add_(_EPS)
            p.addcdiv_(m, denom, value=-step_size)


LocalOptimizer = LocalSGD | LocalAdam


def local_optimizer(params: list[torch.Tensor], spec: TrainSpec) -> LocalOptimizer:
    """The optimizer named by ``spec.optimizer`` (``sgd`` or ``adam``) with the spec's settings."""
    if spec.optimizer == "adam":
        return LocalAdam(params, spec)
    return LocalSGD(params, spec)
