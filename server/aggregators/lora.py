"""Aggregation of LoRA updates: ``lora_naive`` (mean of factors) and ``lora_exact`` (FedEx-LoRA).

Client ``i`` holds ``W + s · B_i A_i`` (``s = α/r``) after local training. Averaging the factors
separately (FedIT: Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning",
ICASSP 2024) gives ``W + s · B̄ Ā`` with ``B̄ = Σ w_i B_i``, ``Ā = Σ w_i A_i`` — **inexact**, since

    Σ w_i B_i A_i − B̄ Ā = Σ w_i (B_i − B̄)(A_i − Ā)        (weights normalized to sum 1)

is the weighted covariance of the factors and vanishes only when the clients agree.

``lora_exact`` keeps the factor means *and* folds that residual into the frozen base weight
(FedEx-LoRA: Singhal, Ponkshe & Vepakomma, "FedEx-LoRA: Exact Aggregation for Federated and
Efficient Fine-Tuning of Foundation Models", arXiv 2410.09432, eq. 6):

    W' = W + s Σ w_i (B_i − B̄)(A_i − Ā),   B' = B̄,   A' = Ā   ⇒   W' + s B' A' = Σ w_i (W + s B_i A_i),

the exact weighted average of the clients' models. It is the default for LoRA because it is exact
at the same upload (factors only; the residual is computed by the server from them), keeps the
adapter continuous across rounds (no re-initialization, unlike merging and restarting the adapter),
and needs no rank-r truncation (a rank-r SVD of ``Σ w_i B_i A_i``, whose rank is up to ``n r``,
would throw away part of the average). The base weight changes densely; the cached downlink
(:mod:`stamen.server.driver.cached_downlink`) sends those ``W`` whole, with the factors and the head,
and nothing of the rest of the frozen model.

Both rules work on deltas (``B_i − B̄ = ΔB_i − ΔB̄``), so the round's base cancels; they need the
tensor layout and ``s`` (the ``<layer>.lora_scale`` buffer of the base model), which
the round driver provides through :meth:`~stamen.server.aggregators.base.Rule.begin_round`.
Layers with a ``lora_R`` (Fed-SB) are linear in the trained ``R`` and need no residual. Exactness
holds for ``server_lr = 1`` (the step is scaled by the server learning rate like any other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stamen.protocols import TensorInfo
from stamen.server.aggregators.base import Aggregator, RoundContext, Rule, check_stack, register
from stamen.server.aggregators.mean import weighted_mean

A_SUFFIX, B_SUFFIX, R_SUFFIX = ".lora_A.weight", ".lora_B.weight", ".lora_R.weight"
SCALE_SUFFIX, BASE_SUFFIX = ".lora_scale", ".weight"


@dataclass(frozen=True)
class LoRASlot:
    """Flat offsets of one LoRA layer: base ``W (out, in)``, ``A (r, in)``, ``B (out, r)``, scale ``s``."""

    name: str
    w: slice
    a: slice
    b: slice
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    scale: float


def _offsets(table: Sequence[TensorInfo]) -> dict[str, tuple[slice, tuple[int, ...]]]:
    out, pos = {}, 0
    for info in table:
        out[info.name] = (slice(pos, pos + info.size), info.shape)
        pos += info.size
    return out


def lora_slots(table: Sequence[TensorInfo], base_flat: np.ndarray) -> list[LoRASlot]:
    """The LoRA (not Fed-SB) layers of a flattened model, found by their ``state_dict`` names."""
    where = _offsets(table)
    slots = []
    for name in where:
        if not name.endswith(A_SUFFIX):
            continue
        layer = name[: -len(A_SUFFIX)]
        if layer + R_SUFFIX in where:
            continue  # Fed-SB: averaging R is already exact
        needed = [layer + s for s in (B_SUFFIX, BASE_SUFFIX, SCALE_SUFFIX)]
        if any(n not in where for n in needed):
            raise ValueError(f"LoRA layer {layer!r} lacks one of {needed}")
        (a, a_shape), (b, b_shape) = where[name], where[layer + B_SUFFIX]
        w, w_shape = where[layer + BASE_SUFFIX]
        fits = len(a_shape) == len(b_shape) == 2 and a_shape[0] == b_shape[1]
        if not fits or w_shape != (b_shape[0], a_shape[1]):
            raise ValueError(f"LoRA layer {layer!r}: shapes W{w_shape}, A{a_shape}, B{b_shape} do not fit")
        scale = float(base_flat[where[layer + SCALE_SUFFIX][0]][0])
        slots.append(LoRASlot(layer, w, a, b, (a_shape[0], a_shape[1]), (b_shape[0], b_shape[1]), scale))
    return slots


def residual(updates: np.ndarray, w: np.ndarray, slot: LoRASlot) -> np.ndarray:
    """``s Σ w_i (ΔB_i − ΔB̄)(ΔA_i − ΔĀ)`` of shape ``(out, in)``, float64.

    ``updates`` is the ``(n, d)`` stack of deltas and ``w`` the ``(n,)`` weights summing to 1.
    """
    da = updates[:, slot.a].astype(np.float64).reshape(-1, *slot.a_shape)  # (n, r, in)
    db = updates[:, slot.b].astype(np.float64).reshape(-1, *slot.b_shape)  # (n, out, r)
    da -= np.einsum("i,ijk->jk", w, da)
    db -= np.einsum("i,ijk->jk", w, db)
    return slot.scale * np.einsum("i,ior,irk->ok", w, db, da, optimize=True)


class LoRAAggregator(Rule):
    """Weighted factor means; with ``exact`` the FedEx-LoRA residual is folded into ``W``.

    Parameters
    ----------
    weighted : bool, default True
        Sample-weighted (FedAvg) or uniform mean.
    exact : bool, default True
        ``True`` is ``lora_exact``, ``False`` is ``lora_naive`` (which still measures the gap when
        bound to a round).
    """

    def __init__(self, weighted: bool = True, exact: bool = True) -> None:
        self.weighted, self.exact = weighted, exact
        self.slots: list[LoRASlot] | None = None
        self.base_flat = np.zeros(0, dtype=np.float32)
        self.last_gap: float = float("nan")

    def begin_round(self, ctx: RoundContext) -> None:
        """Learn the layout and the scales ``s`` of this round's model."""
        self.slots = lora_slots(ctx.table, ctx.base)
        self.base_flat = np.asarray(ctx.base, dtype=np.float32)

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``(n, d) -> (d,)``: the mean, with ``W``'s slot corrected by the residual.

        Also records ``last_gap = ||Σ residuals||_F / ||mean ΔW_exact||_F`` over all LoRA layers, the
        relative error naive averaging would have made in this round's change of ``s B A``.
        """
        if self.slots is None:
            if self.exact:
                raise ValueError("lora_exact needs the model layout: call begin_round(ctx) first")
            return weighted_mean(updates, weights if self.weighted else None)
        w = check_stack(updates, weights if self.weighted else None)
        w = np.full(updates.shape[0], 1.0) if w is None else w
        w = w / w.sum()
        out = weighted_mean(updates, w)
        gap_sq, total_sq = 0.0, 0.0
        for slot in self.slots:
            res = residual(updates, w, slot)
            if self.exact:
                out[slot.w] += res.reshape(-1).astype(np.float32)
            gap_sq += float(np.sum(res * res))
            total_sq += float(np.sum(exact_mean_delta(updates, w, slot, self.base_flat) ** 2))
        self.last_gap = float(np.sqrt(gap_sq / total_sq)) if total_sq > 0 else 0.0
        return out


def exact_mean_delta(updates: np.ndarray, w: np.ndarray, slot: LoRASlot, base_flat: np.ndarray) -> np.ndarray:
    """The exact averaged change of ``s B A``: ``s (Σ w_i B_i A_i − B₀ A₀)`` with ``B_i = B₀ + ΔB_i``,
    ``A_i = A₀ + ΔA_i`` (``B₀``, ``A₀`` from the round's base), shape ``(out, in)``, float64."""
    a0 = base_flat[slot.a].astype(np.float64).reshape(slot.a_shape)
    b0 = base_flat[slot.b].astype(np.float64).reshape(slot.b_shape)
    da = updates[:, slot.a].astype(np.float64).reshape(-1, *slot.a_shape)
    db = updates[:, slot.b].astype(np.float64).reshape(-1, *slot.b_shape)
    mean_da, mean_db = np.einsum("i,ijk->jk", w, da), np.einsum("i,ijk->jk", w, db)
    cross = np.einsum("i,ior,irk->ok", w, db, da, optimize=True)
    return slot.scale * (b0 @ mean_da + mean_db @ a0 + cross)


@register("lora_naive")
def lora_naive(weighted: bool = True) -> Aggregator:
    """Mean of the factors (FedIT); sample-weighted unless ``weighted=False``. Inexact (module doc)."""
    return LoRAAggregator(weighted, exact=False)


@register("lora_exact")
def lora_exact(weighted: bool = True) -> Aggregator:
    """Exact LoRA aggregation (FedEx-LoRA residual into the base weight); the LoRA default."""
    return LoRAAggregator(weighted, exact=True)
