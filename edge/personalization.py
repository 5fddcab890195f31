"""``personalize(store, data, plan)``: sparse-backprop fine-tuning stored as the personal overlay.

PyTorch trains (onnxruntime-training is deprecated, research/edge.md §2); only what the plan
allows is trained (:mod:`stamen.edge.plans`), sparse plans run through the lean autograd path
(:mod:`stamen.edge.sparse_autograd`), and ``full`` runs stock autograd as the anchor. The result
``trained - global`` of the touched tensors becomes the store's overlay, served on top of every
later global version. Data files are ``.npz`` with ``x`` (float, ``(n, features)`` or
``(n, *input_shape)``) and ``y`` (integer labels in ``[0, classes)``).

Each run measures one step's training memory — bytes autograd saves for backward (counted with
``saved_tensors_hooks``, by storage, weights excluded because they are resident anyway) plus
gradients and optimizer state — and the median step time (forward + backward + SGD step).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stamen.protocols import BaseModelMismatch

from .arch import EdgeNet, build_model
from .budget import plan_for_budget
from .inputs import InputSpec, load_npz
from .manifest import ModelVersion
from .modbudget import module_plan_for_budget
from .modplans import ModulePlan, resolve_module_plan
from .modtrain import lean_training
from .plans import PlanSpec, SparsePlan, parse_plan, resolve_fixed
from .runtime import EdgeRuntime
from .sgd import SGD
from .sparse_autograd import LayerConf, sparse_layer
from .status import check_base

__all__ = [
    "PersonalizeConfig",
    "PersonalizeResult",
    "StepStats",
    "load_npz",
    "personalize",
    "probe_batch",
    "resolve_plan",
    "train_plan",
]


@dataclass(frozen=True)
class PersonalizeConfig:
    """Local training settings.

    Attributes
    ----------
    epochs : int, default 5
        Passes over the local data, >= 1.
    batch_size : int, default 32
        Samples per step, >= 1.
    lr : float, default 0.05
        SGD step size, > 0.
    momentum : float, default 0.0
        SGD momentum in [0, 1) (0 = TinyEngine's momentum-free SGD: no optimizer state).
    seed : int, default 0
        Shuffling and probe-batch seed.
    probe : int, default 64
        Samples of the probe batch that scores units for ``budget=`` plans, >= 1.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    seed: int = 0
    probe: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.probe < 1:
            raise ValueError("epochs, batch_size and probe must be >= 1")
        if not self.lr > 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"lr must be > 0 and momentum in [0, 1), got {self.lr}, {self.momentum}")


@dataclass(frozen=True)
class StepStats:
    """Training memory (bytes) of one step and the median step time (ms)."""

    saved_bytes: int
    grad_bytes: int
    opt_bytes: int
    step_ms: float

    @property
    def total_bytes(self) -> int:
        """Saved activations + gradients + optimizer state."""
        return self.saved_bytes + self.grad_bytes + self.opt_bytes


@dataclass
class PersonalizeResult:
    """The resolved plan, the overlay (``trained - global``), step statistics and epoch losses."""

    plan: SparsePlan | ModulePlan
    overlay: dict[str, np.ndarray]
    stats: StepStats
    losses: list[float] = field(default_factory=list)


class _SparseNet(nn.Module):
    """Forward of an :class:`EdgeNet` where only ``plan``'s biases and channels train."""

    def __init__(self, net: EdgeNet, plan: SparsePlan) -> None:
        super().__init__()
        self.net, self.plan = net, plan
        self.biases = nn.ParameterDict()
        self.w_sel = nn.ParameterDict()
        self.sel: dict[int, torch.Tensor] = {}
        self.confs = []
        for i, lp in enumerate(plan.layers):
            if lp.bias:
                self.biases[str(i)] = nn.Parameter(net.bias(i).detach().clone())
            if lp.channels:
                self.sel[i] = torch.tensor(lp.channels, dtype=torch.long)
                self.w_sel[str(i)] = nn.Parameter(net.weight(i).detach().index_select(1, self.sel[i]).clone())
            layer = net.layer(i)
            conv = isinstance(layer, nn.Conv2d)
            stride = int(layer.stride[0]) if isinstance(layer, nn.Conv2d) else 1
            self.confs.append(LayerConf("conv" if conv else "linear", stride, i < len(net.layers) - 1))

    def trainable(self) -> list[nn.Parameter]:
        """The trained tensors: selected biases and weight slices."""
        return [*self.biases.values(), *self.w_sel.values()]

    @torch.no_grad()
    def sync(self) -> None:
        """Write the trained values into the frozen net (after each optimizer step)."""
        for key, w in self.w_sel.items():
            self.net.weight(int(key)).index_copy_(1, self.sel[int(key)], w)
        for key, b in self.biases.items():
            self.net.bias(int(key)).copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.net.spec.input_shape)
        first = self.plan.first
        for i, layer in enumerate(self.net.layers):
            if i < first:
                with torch.no_grad():  # frozen prefix: autograd records nothing
                    x = layer(x)
                    x = torch.relu(x) if self.confs[i].relu else x
            else:
                bias = self.biases[str(i)] if str(i) in self.biases else self.net.bias(i)
                w_sel = self.w_sel.get(str(i))
                x = sparse_layer(x, self.net.weight(i), bias, w_sel, self.sel.get(i), self.confs[i])
            if i == self.net.num_convs - 1:
                x = x.mean(dim=(2, 3))  # (B, C): global mean pool saves nothing
        return x


def _measure_step(step: Callable[[], None], resident: set[int]) -> int:
    """Bytes of distinct non-resident storages autograd saves during ``step``."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in resident:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _trainer(model: EdgeNet, plan: SparsePlan) -> tuple[nn.Module, list[nn.Parameter], Callable[[], None]]:
    for p in model.parameters():
        p.requires_grad_(plan.full)
    if plan.full:
        return model, list(model.parameters()), lambda: None
    sparse = _SparseNet(model, plan)
    return sparse, sparse.trainable(), sparse.sync


def _as_input(x: np.ndarray) -> torch.Tensor:
    """Integer inputs (token ids) stay int64; everything else becomes float32."""
    if np.asarray(x).dtype.kind in "iu":
        return torch.from_numpy(np.ascontiguousarray(x, np.int64))
    return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def train_plan(
    model: nn.Module, x: np.ndarray, y: np.ndarray, plan: SparsePlan | ModulePlan, config: PersonalizeConfig
) -> tuple[StepStats, list[float]]:
    """Train ``model`` in place under ``plan`` with SGD; return step statistics and epoch losses.

    ``plan`` is a :class:`SparsePlan` for an :class:`EdgeNet`, a :class:`ModulePlan` for any other
    model. Dropout is off (``model.eval()``): the step is deterministic and keeps no dropout masks.
    """
    model.eval()
    if isinstance(plan, ModulePlan):
        with lean_training(model, plan) as (params, sync):
            return _train_loop(model, model, params, sync, x, y, config)
    if not isinstance(model, EdgeNet):
        raise TypeError(f"a layer plan ({plan.text}) needs an EdgeNet, got {type(model).__name__}")
    net, params, sync = _trainer(model, plan)
    return _train_loop(model, net, params, sync, x, y, config)


def _train_loop(
    model: nn.Module,
    net: nn.Module,
    params: list[nn.Parameter],
    sync: Callable[[], None],
    x: np.ndarray,
    y: np.ndarray,
    config: PersonalizeConfig,
) -> tuple[StepStats, list[float]]:
    opt = SGD(params, lr=config.lr, momentum=config.momentum)
    xt, yt = _as_input(x), torch.from_numpy(np.asarray(y, np.int64))
    gen = torch.Generator().manual_seed(config.seed)
    resident = _resident(model, net, params)
    times, losses, saved = [], [], -1
    for _ in range(config.epochs):
        order, total = torch.randperm(len(yt), generator=gen), 0.0
        for start in range(0, len(yt), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb, yb = xt[idx], yt[idx]  # copies
            measure = resident if saved < 0 and len(idx) == config.batch_size else None
            t0 = time.perf_counter()
            loss, step_saved = _sgd_step(net, opt, sync, xb, yb, measure)
            times.append(time.perf_counter() - t0)
            saved = step_saved if measure is not None else saved
            total += loss * len(idx)
        losses.append(total / len(yt))
    grads = 4 * sum(p.numel() for p in params)
    opt_bytes = grads if config.momentum > 0 else 0
    return StepStats(max(saved, 0), grads, opt_bytes, 1000 * statistics.median(times)), losses


def _resident(model: nn.Module, net: nn.Module, params: list[nn.Parameter]) -> set[int]:
    """Storages held before any step (parameters, buffers, a sparse net's selections): what a
    step's measured memory leaves out."""
    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *params]}
    if isinstance(net, _SparseNet):
        resident |= {s.untyped_storage().data_ptr() for s in net.sel.values()}
    return resident


def _sgd_step(
    net: nn.Module,
    opt: SGD,
    sync: Callable[[], None],
    xb: torch.Tensor,
    yb: torch.Tensor,
    measure: set[int] | None,
) -> tuple[float, int]:
    """One SGD step on a batch: its loss and, where ``measure`` (the resident storages) is given,
    the bytes its forward saved for backward (:func:`_measure_step`; else -1)."""
    box: list[torch.Tensor] = []

    def forward() -> None:
        box.append(F.cross_entropy(net(xb), yb))

    saved = -1
    if measure is not None:
        saved = _measure_step(forward, measure)
    else:
        forward()
    opt.zero_grad()
    box[0].backward()
    opt.step()
    sync()
    return float(box[0].detach()), saved


def probe_batch(x: np.ndarray, y: np.ndarray, config: PersonalizeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded probe batch (``config.probe`` samples) that scores units for ``budget=`` plans."""
    idx = np.random.default_rng(config.seed).permutation(len(y))[: config.probe]
    return _as_input(x[idx]), torch.from_numpy(np.asarray(y[idx], np.int64))


def resolve_plan(
    spec: PlanSpec, model: nn.Module, x: np.ndarray, y: np.ndarray, config: PersonalizeConfig
) -> SparsePlan | ModulePlan:
    """Resolve a plan for ``model``; ``budget=`` plans score units on a seeded probe batch.

    An :class:`EdgeNet` gets a layer-exact :class:`SparsePlan`; any other model a
    :class:`ModulePlan` (:mod:`stamen.edge.modplans`).
    """
    opt_copies = 1 if config.momentum > 0 else 0
    if not isinstance(model, EdgeNet):
        if spec.kind != "budget":
            return resolve_module_plan(spec, model)
        xp, yp = probe_batch(x, y, config)
        return module_plan_for_budget(model, xp, yp, int(spec.value), config.batch_size, opt_copies)
    if spec.kind != "budget":
        return resolve_fixed(spec, model)
    xp, yp = probe_batch(x, y, config)
    return plan_for_budget(model, xp, yp, int(spec.value), config.batch_size, opt_copies)


def personalize(
    store: EdgeRuntime | str | Path,
    data: tuple[np.ndarray, np.ndarray] | str | Path,
    plan: str | PlanSpec,
    config: PersonalizeConfig | None = None,
    *,
    source: str = "x",
) -> PersonalizeResult:
    """Fine-tune the store's global model on local data under ``plan``; save the overlay.

    Parameters
    ----------
    store : EdgeRuntime or path
        The device's model store (needs an architecture spec).
    data : (x, y) arrays or path to an ``.npz``
        Local labelled data.
    plan : str or PlanSpec
        ``full``, ``bias``, ``last_k=K``, ``channels=R`` or ``budget=SIZE``.
    config : PersonalizeConfig or None
        Training settings (defaults if None).
    source : str, default "x"
        What error messages call the data (the file name when ``data`` is a path).

    Returns
    -------
    PersonalizeResult
        Also stored: the runtime serves ``global + overlay`` afterwards.
    """
    config = config or PersonalizeConfig()
    rt = store if isinstance(store, EdgeRuntime) else EdgeRuntime.open(store)
    if rt.manifest.arch is None:
        raise ValueError("the store has no architecture spec ('stamen.arch'): personalization needs one")
    model = build_model(dict(rt.manifest.arch))
    x, y = _labelled(data, model, source)
    # One private copy of the weights (the module's own); the store's are read again for the
    # overlay (memory-mapped for ONNX stores), never held twice.
    version, held = rt.snapshot()
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in held.items()}
    model.load_state_dict(state, assign=True)
    del state, held
    spec = parse_plan(plan) if isinstance(plan, str) else plan
    resolved = resolve_plan(spec, model, x, y, config)
    stats, losses = train_plan(model, x, y, resolved, config)
    overlay = _store_overlay(rt, version, model, resolved)
    return PersonalizeResult(resolved, overlay, stats, losses)


def _labelled(
    data: tuple[np.ndarray, np.ndarray] | str | Path, model: EdgeNet, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """The local ``(x, y)``, checked against the model's input shape and classes."""
    x, y = load_npz(data, model.spec.classes) if isinstance(data, (str, Path)) else data
    if len(y) != len(x) or len(y) == 0:
        raise ValueError("personalization needs labelled data: x and y of the same non-zero length")
    source = str(data) if isinstance(data, (str, Path)) else source
    InputSpec(model.spec.input_shape, flat_ok=True).check(x, source)
    if int(np.max(y)) >= model.spec.classes or int(np.min(y)) < 0:
        raise ValueError(f"{source}: labels must lie in [0, {model.spec.classes})")
    return x, y


def _store_overlay(
    rt: EdgeRuntime, version: ModelVersion, model: EdgeNet, resolved: SparsePlan | ModulePlan
) -> dict[str, np.ndarray]:
    """The overlay (trained weights minus those trained from), stored on ``version``; refused,
    nothing stored, if another version was committed meanwhile."""
    trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    now, base = rt.snapshot()
    try:
        check_base(now, version)
        overlay = {
            name: (trained[name] - base[name]).astype(np.float32) for name in _touched(resolved, model)
        }
        rt.set_overlay(overlay, resolved.text, base=version)  # checked again under the store lock
    except BaseModelMismatch as exc:
        raise BaseModelMismatch(
            f"{exc} during personalization (an update was applied): nothing stored; run it again"
        ) from None
    return overlay


def _touched(plan: SparsePlan | ModulePlan, model: EdgeNet) -> list[str]:
    if plan.full:
        return list(model.state_dict())
    if isinstance(plan, ModulePlan):
        return [*plan.params, *(w for w, _ in plan.channels)]
    names = []
    for i, lp in enumerate(plan.layers):
        names += [f"layers.{i}.weight"] if lp.channels else []
        names += [f"layers.{i}.bias"] if lp.bias else []
    return names
