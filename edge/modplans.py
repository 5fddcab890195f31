"""Sparse-backprop plans for any torch model built from standard modules (transformers included).

The EdgeNet family has its own layer-exact planner (:mod:`stamen.edge.plans`); every other
``nn.Module`` — in particular the MiniLM classifier (``stamen.client.minilm``) — is planned here.

What a *layer* is
-----------------
The model's **stack** is the ``nn.ModuleList`` / ``nn.Sequential`` that holds the most parameters:
for MiniLM ``bert.encoder.layer``, six transformer blocks. The layers, in execution order, are

- ``prefix``: parameters registered before the stack (MiniLM: the embeddings and their LayerNorm);
- one layer per stack element — for a transformer one whole block: q/k/v and attention-output
  projections, both LayerNorms and the feed-forward pair;
- ``head``: parameters registered after the stack (MiniLM: the classifier).

Registration order is taken as execution order (true for MiniLM, BERT-style models and
``nn.Sequential``). A model without such a container has one layer per module that owns
parameters; its last one is the head.

Plans (same texts as :mod:`stamen.edge.plans`)
-----------------------------------------------
- ``full``: every parameter, stock autograd;
- ``bias``: BitFit (Ben Zaken et al., ACL 2022) — every parameter named ``*bias`` (linear and
  LayerNorm biases), plus the whole head (a new task's classifier must train);
- ``last_k=K``: every parameter of the last ``K`` stack elements, plus the head; earlier layers get
  no autograd graph at all (their inputs and weights do not require gradients);
- ``channels=R``: the ``bias`` plan plus, for each ``nn.Linear`` in the last ``ceil(n/2)`` stack
  elements, its weight on the fraction ``R`` of input features with the largest ``‖W[:, c]‖₂``
  (TinyEngine's ``magnitude+``; a linear layer's channels are its input features), trained through
  the lean layer of :mod:`stamen.edge.sparse_autograd`, which keeps only ``x[..., S]``;
- ``budget=SIZE``: :mod:`stamen.edge.modbudget`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .plans import PlanSpec, magnitude_order

__all__ = ["ModelLayers", "ModulePlan", "model_layers", "resolve_module_plan"]


@dataclass(frozen=True)
class ModelLayers:
    """The layers of a model: ``names`` and the parameter names of each, in execution order.

    ``stack`` lists the indices of the stack elements, ``head`` is the index of the head layer
    (None if the stack is the last thing with parameters).
    """

    names: tuple[str, ...]
    params: tuple[tuple[str, ...], ...]
    stack: tuple[int, ...]
    head: int | None

    def layer_of(self) -> dict[str, int]:
        """Parameter name -> layer index."""
        return {p: i for i, names in enumerate(self.params) for p in names}


@dataclass(frozen=True)
class ModulePlan:
    """A resolved plan on a generic model.

    Attributes
    ----------
    text : str
        Canonical plan text.
    params : tuple of str
        Parameters trained whole.
    channels : tuple of (str, tuple of int)
        ``nn.Linear`` weights trained on some input features only: (weight name, features).
    full : bool
        Stock autograd on every parameter (the anchor).
    """

    text: str
    params: tuple[str, ...]
    channels: tuple[tuple[str, tuple[int, ...]], ...] = ()
    full: bool = False

    def trainable_elements(self, model: nn.Module) -> int:
        """Number of trained scalars."""
        shapes = {n: p.shape for n, p in model.named_parameters()}
        whole = sum(math.prod(shapes[n]) for n in self.params)
        return whole + sum(shapes[w][0] * len(c) for w, c in self.channels)

    def first_layer(self, layers: ModelLayers) -> int:
        """Index of the first layer with anything trained (backprop stops there)."""
        owner = layers.layer_of()
        touched = [owner[n] for n in self.params] + [owner[w] for w, _ in self.channels]
        return min(touched, default=len(layers.names))


def _main_stack(model: nn.Module) -> tuple[str, nn.Module] | None:
    best: tuple[int, str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    return None if best is None else (best[1], best[2])


def model_layers(model: nn.Module) -> ModelLayers:
    """Split ``model``'s parameters into layers (see the module docstring).

    Raises
    ------
    ValueError
        If the model has no parameters.
    """
    names = [n for n, _ in model.named_parameters()]
    if not names:
        raise ValueError("the model has no parameters to personalize")
    found = _main_stack(model)
    if found is None:
        owners = [m for m, mod in model.named_modules() if any(True for _ in mod.parameters(recurse=False))]
        groups = {o: tuple(n for n in names if n.rpartition(".")[0] == o) for o in owners}
        order = sorted(groups, key=lambda o: names.index(groups[o][0]))
        return ModelLayers(tuple(order), tuple(groups[o] for o in order), (), len(order) - 1)
    stack_name, stack = found
    prefix = f"{stack_name}." if stack_name else ""
    elements = [
        (f"{prefix}{key}", tuple(n for n in names if n.startswith(f"{prefix}{key}.")))
        for key, child in stack.named_children()
        if any(True for _ in child.parameters())
    ]
    inside = {n for _, ps in elements for n in ps}
    first = min(names.index(ps[0]) for _, ps in elements)
    before = tuple(n for n in names[:first] if n not in inside)
    after = tuple(n for n in names[first:] if n not in inside)
    out_names, out_params = (["prefix"], [before]) if before else ([], [])
    stack_idx = tuple(range(len(out_names), len(out_names) + len(elements)))
    out_names += [e for e, _ in elements]
    out_params += [ps for _, ps in elements]
    head = None
    if after:
        head = len(out_names)
        out_names.append("head")
        out_params.append(after)
    return ModelLayers(tuple(out_names), tuple(out_params), stack_idx, head)


def _head_params(layers: ModelLayers) -> tuple[str, ...]:
    return layers.params[layers.head] if layers.head is not None else ()


def linear_weights(model: nn.Module) -> dict[str, nn.Linear]:
    """``<module>.weight`` -> its ``nn.Linear`` module, for every linear layer."""
    return {f"{n}.weight" if n else "weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def resolve_module_plan(spec: PlanSpec, model: nn.Module) -> ModulePlan:
    """Resolve ``full``, ``bias``, ``last_k`` or ``channels`` for ``model``.

    Raises
    ------
    ValueError
        For ``last_k`` larger than the stack, or a ``budget`` plan (needs data:
        :func:`stamen.edge.modbudget.module_plan_for_budget`).
    """
    layers = model_layers(model)
    names = [n for n, _ in model.named_parameters()]
    head = _head_params(layers)
    if spec.kind == "full":
        return ModulePlan("full", tuple(names), full=True)
    biases = tuple(n for n in names if n.endswith("bias") or n in head)
    if spec.kind == "bias":
        return ModulePlan("bias", biases)
    n_stack = len(layers.stack)
    if spec.kind == "last_k":
        k = int(spec.value)
        if k > n_stack:
            raise ValueError(f"plan last_k={k}: the model's layer stack has only {n_stack} layers")
        chosen = {n for i in layers.stack[n_stack - k :] for n in layers.params[i]} | set(head)
        return ModulePlan(spec.text(), tuple(n for n in names if n in chosen))
    if spec.kind == "channels":
        late = {n for i in layers.stack[n_stack - math.ceil(n_stack / 2) :] for n in layers.params[i]}
        chans = []
        for wname, lin in linear_weights(model).items():
            if wname in late and wname not in head:
                keep = max(1, math.ceil(spec.value * lin.in_features))
                chans.append((wname, tuple(sorted(magnitude_order(lin.weight)[:keep]))))
        return ModulePlan(spec.text(), biases, tuple(chans))
    raise ValueError(f"plan {spec.text()!r} needs data to resolve (use stamen.edge.modbudget)")
