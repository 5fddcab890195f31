"""``budget=SIZE``: pick the most useful biases and weight channels that fit a memory budget.

TinyEngine (Lin et al., NeurIPS 2022, §3.3, "contribution analysis") maximizes
``Δacc_b[:k] + Σ Δacc_{W_i, r}`` over the bias depth ``k`` and per-layer channel ratios
``r ∈ {0, 1/8, 1/4, 1/2, 1}`` subject to ``Memory(k, i, r) <= budget``, assuming contributions
add up, and solves it offline by evolutionary search with accuracies measured on the server.

On a device we have neither the search time nor held-out accuracies, so two substitutions
(documented, deterministic):

- contribution = first-order loss decrease of one SGD step, ``lr · ‖∂L/∂θ‖²`` (a Taylor
  estimate; lr is common to all units, so the score is ``‖∂L/∂θ‖²``), with gradients from one
  stock-autograd pass on a probe batch of the local data;
- the solver enumerates every backprop depth ``d`` (first trained layer) and, for each, fills the
  remaining budget greedily by score per byte, taking a layer's channel groups in magnitude+
  order and ratio steps 1/8 → 1/4 → 1/2 → 1; the depth with the highest total score wins.

The memory charged is exactly :meth:`SparsePlan.memory_bytes`, so the chosen plan fits the
budget by construction (and its measured training memory is checked against it in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .arch import EdgeNet
from .plans import LayerInfo, LayerPlan, SparsePlan, layer_infos, magnitude_order

__all__ = ["RATIOS", "plan_for_budget", "unit_scores"]

RATIOS = (0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class _Unit:
    layer: int
    bias: bool
    channels: tuple[int, ...]
    score: float
    cost: int
    names: tuple[str, ...] = ()  # parameters of the unit (generic models, :mod:`.modbudget`)


def unit_scores(
    model: EdgeNet, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer squared gradients: bias ``‖∂L/∂b‖²`` and per-input-channel ``‖∂L/∂W[:, c]‖²``."""
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    bias, chans = [], []
    for i in range(len(model.layers)):
        w, b = model.weight(i), model.bias(i)
        assert w.grad is not None and b.grad is not None
        gw = w.grad.transpose(0, 1).reshape(w.shape[1], -1)  # (in, out * kernel)
        chans.append(gw.pow(2).sum(dim=1).detach())
        bias.append(b.grad.pow(2).sum().detach())
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return bias, chans


def _channel_units(
    i: int, info: LayerInfo, order: list[int], g2: torch.Tensor, batch: int, opt: int
) -> list[_Unit]:
    units, done = [], 0
    for r in RATIOS:
        upto = max(1, math.ceil(r * info.in_ch))
        if upto <= done:
            continue
        group = tuple(order[done:upto])
        per = 4 * batch * info.in_pos + 4 * info.out_ch * info.kernel * (1 + opt)
        units.append(_Unit(i, False, group, float(g2[list(group)].sum()), per * len(group)))
        done = upto
    return units


def _fill(
    depth: int, n: int, pools: list[list[_Unit]], bias_units: list[_Unit], budget: int
) -> tuple[float, list[_Unit]]:
    """Greedy by score per byte over the ``n`` layers' units at ``>= depth``; channel groups in order."""
    free = [u for u in bias_units if u.layer >= depth]
    queues = [list(pools[i]) for i in range(depth, n)]
    chosen: list[_Unit] = []
    left, total = budget, 0.0
    while True:
        heads = [q[0] for q in queues if q]
        options = [u for u in free + heads if u.cost <= left]
        if not options:
            return total, chosen
        best = max(options, key=lambda u: (u.score / max(u.cost, 1), -u.layer))
        chosen.append(best)
        left -= best.cost
        total += best.score
        if best in free:
            free.remove(best)
        else:
            next(q for q in queues if q and q[0] is best).pop(0)


def _as_plan(text: str, n: int, chosen: list[_Unit]) -> SparsePlan:
    bias = [False] * n
    chans: list[list[int]] = [[] for _ in range(n)]
    for u in chosen:
        bias[u.layer] |= u.bias
        chans[u.layer].extend(u.channels)
    return SparsePlan(text, tuple(LayerPlan(bias[i], tuple(sorted(chans[i]))) for i in range(n)))


def plan_for_budget(
    model: EdgeNet, x: torch.Tensor, y: torch.Tensor, budget: int, batch: int, opt_copies: int = 0
) -> SparsePlan:
    """The plan with the highest summed score whose training memory is <= ``budget`` bytes.

    Parameters
    ----------
    model : EdgeNet
        The model (weights frozen afterwards).
    x, y : torch.Tensor
        Probe batch (inputs, int64 labels) for the gradient scores.
    budget : int
        Bytes, >= 1.
    batch : int
        Training batch size the plan will run with.
    opt_copies : int
        Optimizer state per gradient (0 for SGD, 1 with momentum).

    Raises
    ------
    ValueError
        If not even the head's bias fits (the message gives the minimum).
    """
    infos = layer_infos(model)
    g2_bias, g2_chan = unit_scores(model, x, y)
    n = len(infos)
    bias_units = [
        _Unit(i, True, (), float(g2_bias[i]), 4 * infos[i].out_ch * (1 + opt_copies)) for i in range(n)
    ]
    pools = [
        _channel_units(i, infos[i], magnitude_order(model.weight(i)), g2_chan[i], batch, opt_copies)
        for i in range(n)
    ]
    best: tuple[float, int, list[_Unit]] = (-1.0, n, [])
    text = f"budget={budget}"
    for depth in range(n - 1, -1, -1):
        fixed = (
            SparsePlan(text, tuple(LayerPlan(bias=i == depth) for i in range(n))).memory_bytes(
                infos, batch, opt_copies
            )
            - bias_units[depth].cost
        )  # masks from depth up + loss
        if fixed >= budget:
            continue
        score, chosen = _fill(depth, n, pools, bias_units, budget - fixed)
        if chosen and score > best[0]:
            best = (score, depth, chosen)
    if not best[2]:
        minimum = SparsePlan(text, tuple(LayerPlan(bias=i == n - 1) for i in range(n))).memory_bytes(
            infos, batch, opt_copies
        )
        raise ValueError(
            f"plan budget={budget}: too small, the cheapest plan needs {minimum} bytes at batch {batch}"
        )
    return _as_plan(text, n, best[2])
