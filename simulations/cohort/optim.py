"""SGD and Adam over stacked per-client parameters, step for step what ``torch.optim`` does.

Each parameter tensor is ``(c, *shape)``: row ``k`` belongs to client ``k``. The cohort trainer sorts
clients by their number of steps, longest first, and every client steps from step 0 without a gap,
so at global step ``t`` the clients still training are a prefix ``[:active]`` and all of them take
their ``(t + 1)``-th step. The optimizers therefore update the prefix in place and the Adam bias
corrections are scalars; clients past their last step are never touched (no weight decay, no
momentum drift), as in the per-client loop.

The update rules are ``torch.optim.SGD`` (``dampening = 0``, no Nesterov; Sutskever et al., ICML
2013 form ``b <- mu b + g; p <- p - lr b`` with ``b_1 = g_1``) and ``torch.optim.Adam`` (Kingma and
Ba, ICLR 2015, with L2 weight decay added to the gradient), in the same operation order as torch's
single-tensor implementations.
"""

from __future__ import annotations

import torch

from stamen.task.spec import TrainSpec

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults (the per-client trainer's)


class StackedSGD:
    """``torch.optim.SGD(lr, momentum, weight_decay)`` on stacked parameters."""

    def __init__(self, params: list[torch.Tensor], spec: TrainSpec) -> None:
        self.params, self.lr, self.momentum, self.wd = params, spec.lr, spec.momentum, spec.weight_decay
        self.bufs: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], active: int, t: int) -> None:
        """Apply step ``t`` (0-based) to the first ``active`` clients; ``grads[i]`` is ``(active, ...)``."""
        lives = [p[:active] for p in self.params]
        if self.wd == 0 and self.momentum == 0:  # plain SGD: one fused call, the same element-wise adds
            torch._foreach_add_(lives, grads, alpha=-self.lr)
            return
        for i, (live, g) in enumerate(zip(lives, grads, strict=True)):
            if self.wd != 0:
                g = g.add(live, alpha=self.wd)
            if self.momentum != 0:
                if t == 0:  # every client is active at step 0 (sizes >= 1)
                    self.bufs.append(g.clone())
                else:
                    self.bufs[i][:active].mul_(self.momentum).add_(g)
                g = self.bufs[i][:active]
            live.add_(g, alpha=-self.lr)


class StackedAdam:
    """``torch.optim.Adam(lr, weight_decay)`` (betas 0.9, 0.999; eps 1e-8) on stacked parameters."""

    def __init__(self, params: list[torch.Tensor], spec: TrainSpec) -> None:
        self.params, self.lr, self.wd = params, spec.lr, spec.weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], active: int, t: int) -> None:
        """Apply step ``t`` (0-based; Adam's step count is ``t + 1``) to the first ``active`` clients."""
        step = t + 1
        step_size = self.lr / (1 - _BETA1**step)
        bc2_sqrt = (1 - _BETA2**step) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            live, m_a, v_a = p[:active], m[:active], v[:active]
            if self.wd != 0:
                g = g.add(live, alpha=self.wd)
            m_a.lerp_(g, 1 - _BETA1)
            v_a.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            denom = (v_a.sqrt() / bc2_sqrt).add_(_EPS)
            live.addcdiv_(m_a, denom, value=-step_size)


def make_stacked_optimizer(params: list[torch.Tensor], spec: TrainSpec) -> StackedSGD | StackedAdam:
    """The stacked counterpart of :func:`stamen.client.trainers.full.make_optimizer`."""
    if spec.optimizer == "adam":
        return StackedAdam(params, spec)
    return StackedSGD(params, spec)
