"""Gradient-inversion (GI) conversion of a stale update into an unstale one (torch).

Wang & Gao, "Tackling Intertwined Data and Device Heterogeneities in Federated Learning with
Unlimited Staleness", AAAI 2025 (arXiv 2309.13536). Ported from the authors' code, read at
pittisl/FL-with-intertwined-heterogeneity commit 4ec51ab: ``fixed.py`` (the ``dc == 1`` branch)
and ``inversefed/reconstruction_algorithms.py`` (``FedAvgReconstructor``, ``loss_steps``,
``loss_steps_od``, ``reconstruction_costs``), itself adapted from Geiping et al.'s
``invertinggradients``. Our own code; no third-party source is reproduced.

Algorithm (``U(w; x, p)`` = the local procedure's delta from ``w`` on inputs ``x`` with soft
targets ``p``):

1. Inversion against the **stale base**: ``(x, y) = argmin ||U(w_{t-tau}; x, softmax(y)) - Δ_stale||_1``
   over a synthetic set of ``num_samples`` inputs ``x`` and label logits ``y`` (DLG-style soft
   labels), both initialised ``randn``; Adam (lr 1) on ``(x, y)`` with the **sign** of the input
   gradient (labels keep their raw gradient), learning rate × 0.1 at 3/8, 5/8 and 7/8 of the run,
   inputs clamped to the data range after every step. The code uses 256 samples and 40,000
   iterations; the CPU-scaled defaults here are 64 and 2,000.
2. Re-run the same local procedure from the **current** model: ``Δ_gi = U(w_t; x, softmax(y))``.
3. Aggregate ``Δ_gi`` in place of ``Δ_stale``.

Deviations from the code, on purpose:

- The soft-label loss inside the unrolled local steps is the soft cross-entropy
  ``mean_i sum_c -softmax(y)_ic log_softmax(f(x))_ic`` the DLG label recovery defines
  (``reconstruct``); ``loss_steps`` routes 2-D labels through ``BCEWithLogitsLoss`` with the raw
  label logits as targets, a quirk we do not reproduce. Any ``SoftLoss`` can be passed.
- The model runs in eval mode for the inversion and the re-run (no dropout), so a conversion is
  deterministic from its seed.
- Optional: only the top ``match_fraction`` of ``|Δ_stale|`` entries enter the matching cost (the
  paper's sparsification for cost; not in the code, where all entries are matched), and a
  previous reconstruction can warm-start the next one (the paper's ``D_rec`` re-use).
- Tensors that are not parameters (buffers such as BatchNorm statistics) keep the stale delta.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from stamen.protocols import ValidationError
from stamen.server.staleness.compensation import ModelVersions, as_float32

Weights = dict[str, np.ndarray]
SoftLoss = Callable[[Tensor, Tensor], Tensor]
"""``(logits (n, C), target probabilities (n, C)) -> scalar loss``."""


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``mean_i sum_c -targets_ic * log_softmax(logits)_ic``; equals cross-entropy for one-hot targets."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


class LocalProcedure:
    """``(model, params, x, targets, *, create_graph) -> {name: end - start}``; the base interface.

    ``params`` maps every parameter name of ``model`` to its starting value; the result must be
    differentiable in ``x`` and ``targets`` when ``create_graph`` is true.
    """

    def __call__(
        self,
        model: nn.Module,
        params: Mapping[str, Tensor],
        x: Tensor,
        targets: Tensor,
        *,
        create_graph: bool,
    ) -> dict[str, Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class UnrolledSGD(LocalProcedure):
    """``steps`` full-batch gradient steps ``w <- w - lr * grad loss(f_w(x), targets)``.

    Defaults are the paper code's client: 5 local epochs of one full batch (600 samples, batch
    600), SGD lr 0.01, momentum 0 (``options.py``, ``update.py``).
    """

    steps: int = 5
    lr: float = 0.01
    loss: SoftLoss = soft_cross_entropy

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"UnrolledSGD: steps must be an integer >= 1, got {self.steps!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"UnrolledSGD: lr must be a finite number > 0, got {self.lr!r}")

    def __call__(
        self,
        model: nn.Module,
        params: Mapping[str, Tensor],
        x: Tensor,
        targets: Tensor,
        *,
        create_graph: bool,
    ) -> dict[str, Tensor]:
        start = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        p = dict(start)
        for _ in range(self.steps):
            loss = self.loss(functional_call(model, p, (x,)), targets)
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
            p = {k: v - self.lr * g for (k, v), g in zip(p.items(), grads, strict=True)}
            if not create_graph:
                p = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        delta = {k: p[k] - start[k] for k in p}
        return delta if create_graph else {k: v.detach() for k, v in delta.items()}


@dataclass(frozen=True)
class GIConfig:
    """Inversion settings (defaults: CPU-scaled; the paper code's values in brackets).

    Attributes
    ----------
    num_samples : int, default 64 [256]
        Size of the synthetic set ``D_rec``.
    iterations : int, default 2000 [40000]
        Optimizer steps of the inversion.
    lr : float, default 1.0 [1.0]
        Adam learning rate on the inputs and label logits. The code's 1.0 goes with 40k iterations
        and normalised MNIST pixels; our tests and benchmark (inputs in ``[0, 1]``, 200-2000
        iterations) use 0.1.
    signed : bool, default True [True]
        Use the sign of the input gradient.
    lr_decay : bool, default True [True]
        Learning rate × 0.1 at 3/8, 5/8 and 7/8 of the iterations.
    box : (float, float) or None, default None [the image range]
        Clamp inputs to ``[low, high]`` after every step (digits: ``(0, 1)``); ``None``: no clamp.
    match_fraction : float, default 1.0 [1.0]
        Share of the largest-magnitude stale-delta entries matched, in ``(0, 1]``.
    seed : int, default 0
        Seed of the ``randn`` initialisation.
    """

    num_samples: int = 64
    iterations: int = 2000
    lr: float = 1.0
    signed: bool = True
    lr_decay: bool = True
    box: tuple[float, float] | None = None
    match_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_samples", "iterations"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GIConfig.{key} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"GIConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.match_fraction, int | float) and 0 < self.match_fraction <= 1):
            raise ValueError(f"GIConfig.match_fraction must be in (0, 1], got {self.match_fraction!r}")
        if self.box is not None and not (len(self.box) == 2 and self.box[0] < self.box[1]):
            raise ValueError(f"GIConfig.box must be (low, high) with low < high, got {self.box!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"GIConfig.seed must be an integer in [0, 2**63), got {self.seed!r}")


@dataclass(frozen=True)
class Reconstruction:
    """A synthetic data set ``D_rec`` and how well it reproduces the stale update.

    Attributes
    ----------
    x : Tensor
        Inputs, ``(num_samples, *input_shape)``.
    label_logits : Tensor
        ``(num_samples, num_classes)``; the soft labels are their softmax.
    residual_l1 : float
        Final inversion loss ``||U(w_{t-tau}; D_rec) - Δ_stale||_1`` over all parameter entries.
    replay : dict of str to ndarray
        ``U(w_{t-tau}; D_rec)``, the stale update as ``D_rec`` reproduces it.
    loss_trace : tuple of float
        The matching cost at about 10 evenly spaced iterations (diagnostics).
    """

    x: Tensor
    label_logits: Tensor
    residual_l1: float
    replay: Weights
    loss_trace: tuple[float, ...]

    @property
    def targets(self) -> Tensor:
        """The soft labels, ``softmax(label_logits)``."""
        return torch.softmax(self.label_logits, dim=1)


@dataclass(frozen=True)
class Conversion:
    """The converted delta and the two errors the switch-back rule reads.

    ``delta`` is ``U(w_t; D_rec)`` for every parameter (the stale delta for other tensors);
    ``residual_l1`` is ``ê_gi``, ``shift_l1 = ||U(w_t; D_rec) - U(w_{t-tau}; D_rec)||_1`` is
    ``ê_stale``; ``stale_l1 = ||Δ_stale||_1`` gives their scale.
    """

    delta: Weights
    residual_l1: float
    shift_l1: float
    stale_l1: float
    reconstruction: Reconstruction


def _param_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _tensors(weights: Mapping[str, np.ndarray], names: Sequence[str], where: str) -> dict[str, Tensor]:
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValidationError(f"GI conversion: {where} lacks parameter(s) {missing}")
    return {n: torch.as_tensor(np.array(weights[n], dtype=np.float32)) for n in names}


@torch.no_grad()
def _load_buffers(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy the buffers ``weights`` holds (e.g. BatchNorm statistics) into ``model``."""
    for name, buf in model.named_buffers():
        if name in weights:
            buf.copy_(torch.as_tensor(np.array(weights[name])))


def _match_masks(target: Mapping[str, Tensor], fraction: float) -> dict[str, Tensor] | None:
    """Masks of the top ``fraction`` entries of ``|target|`` over all tensors (``None`` = all)."""
    if fraction >= 1.0:
        return None
    flat = torch.cat([t.abs().flatten() for t in target.values()])
    k = max(1, math.ceil(fraction * flat.numel()))
    threshold = torch.topk(flat, k).values[-1]
    return {n: (t.abs() >= threshold).to(t.dtype) for n, t in target.items()}


def _l1(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
) -> Tensor:
    terms = [((a[n] - b[n]).abs() * (1.0 if masks is None else masks[n])).sum() for n in b]
    return torch.stack(terms).sum()


def _milestones(iterations: int) -> list[int]:
    return sorted({max(1, round(iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})


def _initial(
    config: GIConfig, input_shape: Sequence[int], num_classes: int, init: Reconstruction | None
) -> tuple[Tensor, Tensor]:
    if init is not None:
        if tuple(init.x.shape) != (config.num_samples, *input_shape):
            expected = (config.num_samples, *input_shape)
            raise ValueError(f"GI warm start: x has shape {tuple(init.x.shape)}, expected {expected}")
        return init.x.clone(), init.label_logits.clone()
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn((config.num_samples, *input_shape), generator=gen)
    return x, torch.randn((config.num_samples, num_classes), generator=gen)


def invert_update(
    model: nn.Module,
    stale_base: Mapping[str, np.ndarray],
    stale_delta: Mapping[str, np.ndarray],
    procedure: LocalProcedure,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    config: GIConfig = GIConfig(),
    init: Reconstruction | None = None,
) -> Reconstruction:
    """Find ``D_rec`` such that the local procedure from ``stale_base`` reproduces ``stale_delta``.

    Parameters
    ----------
    model : nn.Module
        The architecture (its parameter values are not used; its buffers are set from
        ``stale_base`` when present).
    stale_base, stale_delta : mapping of str to ndarray
        ``w_{t-tau}`` and ``Δ_stale = w_local - w_{t-tau}``; every parameter of ``model`` present.
    procedure : LocalProcedure
        The client's local procedure ``U``, differentiable (e.g. :class:`UnrolledSGD`).
    input_shape : sequence of int
        Shape of one input (``(64,)`` for digits; ``(1, 8, 8)`` for a CNN on them).
    num_classes : int
        Number of soft-label classes (``>= 2``).
    config : GIConfig
        Inversion settings.
    init : Reconstruction or None
        Warm start from an earlier reconstruction of the same client.
    """
    if num_classes < 2:
        raise ValueError(f"GI conversion: num_classes must be >= 2, got {num_classes}")
    names = _param_names(model)
    base = _tensors(stale_base, names, "the stale base model")
    target = _tensors(stale_delta, names, "the stale delta")
    masks = _match_masks(target, config.match_fraction)
    was_training = model.training
    model.eval()
    _load_buffers(model, stale_base)
    try:
        x, y = _initial(config, input_shape, num_classes, init)
        trace = _optimise(model, base, target, masks, procedure, x, y, config)
        replay = procedure(model, base, x, torch.softmax(y, dim=1), create_graph=False)
    finally:
        model.train(was_training)
    residual = float(_l1(replay, target))
    numpy_replay = {n: t.numpy().astype(np.float32) for n, t in replay.items()}
    return Reconstruction(x.detach(), y.detach(), residual, numpy_replay, trace)


def _optimise(
    model: nn.Module,
    base: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
    procedure: LocalProcedure,
    x: Tensor,
    y: Tensor,
    config: GIConfig,
) -> tuple[float, ...]:
    """Adam on ``(x, y)`` minimising the L1 matching cost; updates ``x`` and ``y`` in place."""
    x.requires_grad_(True)
    y.requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=config.lr)
    sched = (
        torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(config.iterations), 0.1)
        if config.lr_decay
        else None
    )
    every = max(1, config.iterations // 10)
    trace: list[float] = []
    for it in range(config.iterations):
        opt.zero_grad(set_to_none=True)
        cost = _l1(procedure(model, base, x, torch.softmax(y, dim=1), create_graph=True), target, masks)
        cost.backward(inputs=[x, y])
        if config.signed:
            assert x.grad is not None
            x.grad.sign_()
        opt.step()
        if sched is not None:
            sched.step()
        if config.box is not None:
            with torch.no_grad():
                x.clamp_(config.box[0], config.box[1])
        if it % every == 0 or it == config.iterations - 1:
            trace.append(float(cost.detach()))
    x.requires_grad_(False)
    y.requires_grad_(False)
    return tuple(trace)


def convert_stale_update(
    model: nn.Module,
    versions: ModelVersions,
    stale_delta: Mapping[str, np.ndarray],
    procedure: LocalProcedure,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    config: GIConfig = GIConfig(),
    init: Reconstruction | None = None,
) -> Conversion:
    """Invert ``stale_delta`` against ``versions.stale_base``, re-run from ``versions.current``.

    Returns the converted delta (``U(w_t; D_rec)`` for parameters, the stale delta for any other
    tensor) with the errors the switch-back rule reads; see :func:`invert_update` for the
    arguments.
    """
    stale = as_float32(stale_delta)
    rec = invert_update(
        model, versions.stale_base, stale, procedure,
        input_shape=input_shape, num_classes=num_classes, config=config, init=init,
    )  # fmt: skip
    names = _param_names(model)
    current = _tensors(versions.current, names, "the current model")
    was_training = model.training
    model.eval()
    _load_buffers(model, versions.current)
    try:
        rerun = procedure(model, current, rec.x, rec.targets, create_graph=False)
    finally:
        model.train(was_training)
    delta = dict(stale)
    delta.update({n: t.numpy().astype(np.float32).reshape(stale[n].shape) for n, t in rerun.items()})
    shift = float(sum(np.abs(delta[n].astype(np.float64) - rec.replay[n]).sum() for n in names))
    stale_l1 = float(sum(np.abs(stale[n].astype(np.float64)).sum() for n in names))
    return Conversion(delta, rec.residual_l1, shift, stale_l1, rec)
