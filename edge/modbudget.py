"""``budget=SIZE`` on a generic model (MiniLM, …): the most useful parameters whose training memory fits.

The same selection as :mod:`stamen.edge.budget` (TinyEngine's contribution analysis with the
first-order score ``‖∂L/∂θ‖²`` from one stock-autograd pass on a probe batch; every backprop depth
tried; the rest filled greedily by score per byte, linear weights in magnitude+ channel groups of
ratio 1/8 → 1/4 → 1/2 → 1), over the layers of :mod:`stamen.edge.modplans`. Units per layer: its
biases (one unit), each ``nn.Linear`` weight (channel groups), every other parameter (whole).

What the memory charge is (bytes, batch ``B``, ``opt`` optimizer copies per gradient):

- **backprop through layer i** — *measured*, not modelled: one forward of ``B`` probe samples with
  every bias trainable and every weight frozen, counting the bytes autograd saves (by storage,
  weights excluded, ``saved_tensors_hooks``) while layer ``i``'s modules run, plus the ops after
  them up to the next layer (e.g. mean pooling after the last block). For a transformer block this
  is what backward needs for the input gradient through LayerNorm, GELU and attention, with frozen
  weights. Depth ``d`` is charged the loss plus every layer ``>= d``;
- a trained bias or whole parameter: ``4 · numel · (1 + opt)``; a whole ``nn.Embedding`` weight
  also its saved indices, any other whole weight (not a norm, whose input is saved anyway) its
  input, ``4 · numel(input)``;
- a linear weight on ``k`` input features: the lean layer's saved ``x[..., S]``,
  ``4 · k · T`` (``T`` = tokens per batch, from the probe's input shapes), its index ``8 · k`` and
  ``4 · out · k · (1 + opt)``.

These add up to an estimate that shares no storage between units (an upper bound when two units
save the same tensor). The chosen plan is then **measured** the same way as a training step; while
it exceeds the budget the unit with the lowest score per byte is dropped, so the returned plan fits
its budget by measurement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .budget import RATIOS, _fill, _Unit
from .modplans import ModelLayers, ModulePlan, linear_weights, model_layers
from .modtrain import lean_training
from .plans import magnitude_order

__all__ = ["Profile", "measure_plan_bytes", "module_plan_for_budget", "profile_layers"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.RMSNorm)


@dataclass
class Profile:
    """Measured facts of one forward at the training batch size.

    ``layer_bytes[i]``: bytes saved for backprop through layer ``i``; ``loss_bytes``: by the loss;
    ``inputs``: per module name, ``numel`` of its (first) input.
    """

    layer_bytes: list[int]
    loss_bytes: int
    inputs: dict[str, int] = field(default_factory=dict)


def _saving(
    resident: set[int], sink: Callable[[int, int], object]
) -> torch.autograd.graph.saved_tensors_hooks:
    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in resident:
            sink(storage.data_ptr(), storage.nbytes())
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def profile_layers(model: nn.Module, layers: ModelLayers, x: torch.Tensor, y: torch.Tensor) -> Profile:
    """Measure :class:`Profile` on the batch ``x, y`` (every bias trainable, weights frozen, eval mode)."""
    model.eval()
    owner = layers.layer_of()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    current, seen = [0], dict[int, tuple[int, int]]()
    prof = Profile([0] * len(layers.names), 0)
    handles = []
    for mname, module in model.named_modules():
        own = [f"{mname}.{n}" if mname else n for n, _ in module.named_parameters(recurse=False)]
        if own:

            def hook(_m: nn.Module, args: tuple, i: int = owner[own[0]], name: str = mname) -> None:
                current[0] = i
                if args and isinstance(args[0], torch.Tensor):
                    prof.inputs[name] = args[0].numel()

            handles.append(module.register_forward_pre_hook(hook))
    resident = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def sink(ptr: int, nbytes: int) -> None:
        seen.setdefault(ptr, (nbytes, current[0]))

    try:
        with _saving(resident, sink):
            logits = model(x)
            current[0] = -1  # the loss
            F.cross_entropy(logits, y)
    finally:
        for h in handles:
            h.remove()
    for nbytes, i in seen.values():
        if i < 0:
            prof.loss_bytes += nbytes
        else:
            prof.layer_bytes[i] += nbytes
    return prof


def measure_plan_bytes(model: nn.Module, plan: ModulePlan, x: torch.Tensor, y: torch.Tensor, opt: int) -> int:
    """Training memory of one step of ``plan`` on ``x, y``: saved bytes + gradients + optimizer state.

    Dropout off (``model.eval()``), as in :func:`stamen.edge.personalization.train_plan`.
    """
    model.eval()
    with lean_training(model, plan) as (params, _):
        resident = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *params]}
        seen: dict[int, int] = {}
        with _saving(resident, lambda ptr, n: seen.setdefault(ptr, n)):
            F.cross_entropy(model(x), y)
    return sum(seen.values()) + 4 * (1 + opt) * sum(p.numel() for p in params)


def _scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """``∂L/∂θ`` of every parameter (mean loss over the probe, in chunks of ``batch``)."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    for start in range(0, len(y), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        (F.cross_entropy(model(xb), yb, reduction="sum") / len(y)).backward()
    grads = {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return grads


def _linear_units(i: int, wname: str, lin: nn.Linear, g: torch.Tensor, tokens: int, opt: int) -> list[_Unit]:
    g2 = g.pow(2).sum(dim=0)  # (in,)
    order, units, done = magnitude_order(lin.weight), [], 0
    per = 4 * tokens + 8 + 4 * lin.out_features * (1 + opt)
    for r in RATIOS:
        upto = max(1, math.ceil(r * lin.in_features))
        if upto > done:
            group = tuple(order[done:upto])
            units.append(_Unit(i, False, group, float(g2[list(group)].sum()), per * len(group), (wname,)))
            done = upto
    return units


def _whole_cost(module: nn.Module, mname: str, numel: int, prof: Profile, opt: int) -> int:
    extra = 0
    if isinstance(module, nn.Embedding):
        extra = 8 * prof.inputs.get(mname, 0)
    elif not isinstance(module, _NORMS):
        extra = 4 * prof.inputs.get(mname, 0)
    return 4 * numel * (1 + opt) + extra


def _units(
    model: nn.Module, layers: ModelLayers, grads: dict[str, torch.Tensor], prof: Profile, opt: int
) -> tuple[list[list[_Unit]], list[_Unit]]:
    """Per-layer channel-group queues of linear weights, and the free (bias / whole) units."""
    owner, params = layers.layer_of(), dict(model.named_parameters())
    modules = dict(model.named_modules())
    linears = linear_weights(model)
    pools: list[list[_Unit]] = [[] for _ in layers.names]
    free: list[_Unit] = []
    for i, names in enumerate(layers.params):
        biases = tuple(n for n in names if n.endswith("bias"))
        if biases:
            score = sum(float(grads[n].pow(2).sum()) for n in biases)
            cost = 4 * (1 + opt) * sum(params[n].numel() for n in biases)
            free.append(_Unit(i, True, (), score, cost, biases))
    for name, p in params.items():
        i, mname = owner[name], name.rpartition(".")[0]
        if name.endswith("bias"):
            continue
        if name in linears:
            tokens = prof.inputs.get(mname, 0) // linears[name].in_features
            pools[i] += _linear_units(i, name, linears[name], grads[name], tokens, opt)
        else:
            cost = _whole_cost(modules[mname], mname, p.numel(), prof, opt)
            free.append(_Unit(i, False, (), float(grads[name].pow(2).sum()), cost, (name,)))
    return pools, free


def _as_module_plan(text: str, model: nn.Module, chosen: list[_Unit]) -> ModulePlan:
    whole = {n for u in chosen if not u.channels for n in u.names}
    chans: dict[str, list[int]] = {}
    for u in chosen:
        if u.channels:
            chans.setdefault(u.names[0], []).extend(u.channels)
    order = [n for n, _ in model.named_parameters()]
    return ModulePlan(
        text,
        tuple(n for n in order if n in whole),
        tuple((w, tuple(sorted(chans[w]))) for w in order if w in chans),
    )


def module_plan_for_budget(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, batch: int, opt_copies: int = 0
) -> ModulePlan:
    """The plan with the highest summed score whose measured training memory is <= ``budget``.

    Parameters are as :func:`stamen.edge.budget.plan_for_budget`; ``x`` may hold token ids.

    Raises
    ------
    ValueError
        If nothing fits (the message gives the cheapest unit's charge).
    """
    layers = model_layers(model)
    model.eval()
    grads = _scores(model, x, y, batch)
    xb, yb = x[:batch], y[:batch]
    prof = profile_layers(model, layers, xb, yb)
    pools, free = _units(model, layers, grads, prof, opt_copies)
    n, text = len(layers.names), f"budget={budget}"
    best: tuple[float, list[_Unit]] = (-1.0, [])
    for depth in range(n - 1, -1, -1):
        fixed = prof.loss_bytes + sum(prof.layer_bytes[depth:])
        if fixed < budget:
            score, chosen = _fill(depth, n, pools, free, budget - fixed)
            if chosen and score > best[0]:
                best = (score, chosen)
    chosen = sorted(best[1], key=lambda u: u.score / max(u.cost, 1), reverse=True)
    for _ in range(len(chosen)):
        plan = _as_module_plan(text, model, chosen)
        if measure_plan_bytes(model, plan, xb, yb, opt_copies) <= budget:
            return plan
        chosen.pop()  # the estimate was short: drop the least useful unit per byte
    cheapest = prof.loss_bytes + prof.layer_bytes[-1] + min(u.cost for u in itertools.chain(free, *pools))
    raise ValueError(
        f"plan budget={budget}: too small, the cheapest plan needs about {cheapest} bytes at batch {batch}"
    )
