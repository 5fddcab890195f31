"""Cohort-batched local training: a whole cohort's FedAvg client updates in one set of tensor ops.

Each client's update is what :func:`stamen.client.core.local_update` with the ``full`` trainer
computes (McMahan et al., AISTATS 2017, Algorithm 1, ClientUpdate: ``E`` epochs of minibatch
SGD/Adam of size ``B`` from the global weights), to float tolerance:

- weights are stacked per client, ``(c, *shape)``, and the model runs once per step for every client:
  a dense chain (``mlp``, ``logreg``) through closed-form batched matrix products
  (:mod:`stamen.simulations.cohort.dense`), anything else through ``torch.func.vmap`` over
  ``torch.func.functional_call`` and autograd (batched matmuls/convolutions);
- each client's batch order is its own ``torch.randperm`` stream for its seed
  (:mod:`stamen.simulations.cohort.mt19937`), batches cut as ``order[j*B:(j+1)*B]`` with the last
  one short, and its loss is the mean over its own batch (masking pads short batches);
- clients are sorted by their number of steps (``E * ceil(n / B)``), longest first, so the clients
  still training at step ``t`` are a prefix and the rest are never touched
  (:mod:`stamen.simulations.cohort.optim`);
- cohorts are processed in chunks of clients to bound memory.

The deltas (``local - global``) come back as one float32 ``(c, d)`` stack whose columns follow
:func:`stamen.protocols.tensor_table` of the global weights (their mapping order), so a round driver
can encode or aggregate rows directly. The same code runs on CPU and CUDA: the device is the data's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from stamen.protocols import TensorInfo, tensor_table
from stamen.simulations.cohort.data import CohortData
from stamen.simulations.cohort.dense import DenseStep, dense_plan
from stamen.simulations.cohort.mt19937 import randperms, randperms_loop
from stamen.simulations.cohort.optim import make_stacked_optimizer
from stamen.simulations.cohort.support import module_reason
from stamen.task.spec import TrainSpec

BLOCK_ENTRIES = 1 << 20
"""Batch indices the batcher prepares at once (``steps x clients x batch``; 8 MB of int64)."""

DEFAULT_CHUNK = {"cpu": 2048, "cuda": 131072}
"""Clients trained together per chunk, by device type (memory grows linearly in it)."""

Forward = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
Step = Callable[
    [list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]
]  # (active params, x, y, weight) -> (per-client losses, per-parameter gradients)


@dataclass(frozen=True)
class CohortResult:
    """What a cohort's local training produced, row ``k`` for the cohort's ``k``-th client.

    Attributes
    ----------
    deltas : np.ndarray or torch.Tensor
        ``float32`` updates ``local - global``, shape ``(c, d)``, columns in ``table`` order
        (the ``out`` argument of :func:`train_cohort` when one was given).
    num_examples : np.ndarray
        ``int64`` training samples per client (the FedAvg weight), shape ``(c,)``.
    train_loss : np.ndarray
        ``float64`` mean training loss over each client's steps, shape ``(c,)``.
    table : tuple of TensorInfo
        Names, shapes and dtypes of the tensors a row concatenates (flattened, in this order).
    """

    deltas: np.ndarray | torch.Tensor
    num_examples: np.ndarray
    train_loss: np.ndarray
    table: tuple[TensorInfo, ...]


def train_cohort(
    model: nn.Module,
    global_weights: Mapping[str, np.ndarray],
    data: CohortData,
    spec: TrainSpec,
    seeds: np.ndarray,
    *,
    chunk_size: int | None = None,
    out: np.ndarray | torch.Tensor | None = None,
    closed_form: bool = True,
) -> CohortResult:
    """Train every client of ``data`` from ``global_weights`` and return their stacked deltas.

    Parameters
    ----------
    model : nn.Module
        The task's model (structure only: its own weights are not read); see
        :func:`~stamen.simulations.cohort.support.module_reason` for what batches.
    global_weights : Mapping[str, np.ndarray]
        Starting weights, one per parameter, in ``tensor_table`` order (e.g. ``get_weights``).
    data : CohortData
        The cohort's clients; their device is where training runs.
    spec : TrainSpec
        Trainer ``full``; ``epochs``, ``batch_size``, ``lr``, ``optimizer``, ``momentum`` and
        ``weight_decay`` are honoured.
    seeds : np.ndarray
        Each client's round seed (``client_seed``), integers in ``[0, 2**63)``, shape ``(c,)``.
    chunk_size : int, optional
        Clients per chunk, ``>= 1``; default :data:`DEFAULT_CHUNK` for the device type.
    out : np.ndarray or torch.Tensor, optional
        Preallocated ``float32`` ``(c, d)`` stack to fill (any device); allocated when omitted.
    closed_form : bool
        Use the closed-form gradients of :mod:`~stamen.simulations.cohort.dense` when the model is a
        dense chain (default); ``False`` forces the general ``vmap`` + autograd path.

    Raises
    ------
    ValueError
        For a trainer or model that cannot be batched, or mismatched names, shapes or sizes.
    """
    names = _check(model, global_weights, spec)
    device = data.x.device
    base = [torch.as_tensor(np.asarray(global_weights[n], dtype=np.float32)).to(device) for n in names]
    c, d = data.num_clients, sum(int(b.numel()) for b in base)
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.shape != (c,):
        raise ValueError(f"need one seed per client: {c} clients, seeds of shape {seeds.shape}")
    out = _output(out, c, d)
    sizes = data.sizes.cpu().numpy()
    step = _make_step(model, names, closed_form)
    loss = np.empty(c, dtype=np.float64)
    for idx in _chunks(sizes, spec, chunk_size or DEFAULT_CHUNK.get(device.type, DEFAULT_CHUNK["cpu"])):
        deltas, chunk_loss = _train_chunk(step, base, data, idx, seeds[idx], sizes[idx], spec)
        _store(out, idx, deltas)
        loss[idx] = chunk_loss
    return CohortResult(out, sizes.astype(np.int64), loss, tensor_table(global_weights))


def _chunks(sizes: np.ndarray, spec: TrainSpec, chunk: int) -> list[np.ndarray]:
    """Client indices sorted by step count, longest first (the clients still training at a step are
    a prefix), cut into chunks of ``chunk`` (``>= 1``)."""
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    totals = spec.epochs * -(-sizes // spec.batch_size)  # steps per client
    order = np.argsort(-totals, kind="stable")
    return [order[lo : lo + chunk] for lo in range(0, len(order), chunk)]


def _check(model: nn.Module, weights: Mapping[str, np.ndarray], spec: TrainSpec) -> list[str]:
    """Names in ``weights`` order; raise ``ValueError`` for what the cohort trainer cannot run."""
    if spec.trainer != "full":
        raise ValueError(f"the cohort trainer runs trainer 'full' only, got {spec.trainer!r}")
    reason = module_reason(model)
    if reason is not None:
        raise ValueError(f"cannot batch this model: {reason}")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    names = list(weights)
    if set(names) != set(shapes):
        raise ValueError(f"weight names {sorted(names)} differ from the model's {sorted(shapes)}")
    for n in names:
        if tuple(np.shape(weights[n])) != shapes[n]:
            raise ValueError(f"shape of {n!r}: model {shapes[n]}, weights {np.shape(weights[n])}")
    return names


def _output(out: np.ndarray | torch.Tensor | None, c: int, d: int) -> np.ndarray | torch.Tensor:
    if out is None:
        return np.empty((c, d), dtype=np.float32)
    if tuple(out.shape) != (c, d) or out.dtype not in (np.float32, torch.float32):
        raise ValueError(f"out must be float32 of shape {(c, d)}, got {out.dtype} {tuple(out.shape)}")
    return out


def _store(out: np.ndarray | torch.Tensor, idx: np.ndarray, deltas: torch.Tensor) -> None:
    if isinstance(out, torch.Tensor):
        out[torch.as_tensor(idx, device=out.device)] = deltas.to(out.device)
    else:
        out[idx] = deltas.cpu().numpy()


def _make_step(model: nn.Module, names: list[str], closed_form: bool) -> Step:
    """The closed-form step of a dense chain, else the model vmapped over clients with autograd."""
    plan = dense_plan(model, names) if closed_form else None
    if plan is not None:
        return DenseStep(plan)
    forward = _batched_forward(model, names)

    def step(
        params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [p.detach().requires_grad_() for p in params]
        losses = _client_losses(forward(leaves, x), y, weight)  # (active,)
        return losses.detach(), list(torch.autograd.grad(losses.sum(), leaves))

    return step


def _batched_forward(model: nn.Module, names: list[str]) -> Forward:
    """``(stacked params, x (c, b, ...)) -> logits (c, b, classes)``: the model vmapped over clients."""

    def one(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, params, strict=True)), (x,))

    return vmap(one)


def _train_chunk(
    step: Step,
    base: list[torch.Tensor],
    data: CohortData,
    idx: np.ndarray,
    seeds: np.ndarray,
    sizes: np.ndarray,
    spec: TrainSpec,
) -> tuple[torch.Tensor, np.ndarray]:
    """Train the clients ``idx`` (sorted by step count, descending); return (deltas (k, d), losses)."""
    device, k, width = data.x.device, len(idx), int(sizes.max())
    totals = spec.epochs * -(-sizes // spec.batch_size)
    clients = torch.as_tensor(idx, device=device)
    orders = _orders(seeds, sizes, spec.epochs, device)  # (k, E * width)
    rows = data.rows[clients, :width]
    batch = _Batcher(data, rows, orders, data.sizes[clients], width, spec.batch_size, int(totals[0]))
    params = [b.expand(k, *b.shape).clone() for b in base]  # (k, *shape) each
    opt = make_stacked_optimizer(params, spec)
    steps = int(totals[0])
    actives = np.count_nonzero(totals[None, :] > np.arange(steps)[:, None], axis=1).tolist()
    step_losses = torch.zeros(steps, k, dtype=torch.float32, device=device)  # 0 past a client's end
    for t, active in enumerate(actives):
        xb, yb, weight = batch(t, active)
        losses, grads = step([p[:active] for p in params], xb, yb, weight)
        opt.step(grads, active, t)
        step_losses[t, :active] = losses
    deltas = torch.cat([(p - b).reshape(k, -1) for p, b in zip(params, base, strict=True)], dim=1)
    return deltas, (step_losses.double().sum(0).cpu().numpy() / totals)


def _orders(seeds: np.ndarray, sizes: np.ndarray, epochs: int, device: torch.device) -> torch.Tensor:
    """Every client's batch orders, client-major ``(k, E * width)``: ``torch.randperm`` itself on the
    CPU (one generator per client), the vectorised generator on the device otherwise."""
    if device.type == "cpu":
        orders = torch.from_numpy(randperms_loop(seeds, sizes, epochs))
    else:
        dev_seeds, dev_sizes = torch.as_tensor(seeds, device=device), torch.as_tensor(sizes, device=device)
        orders = randperms(dev_seeds, dev_sizes, epochs)
    return orders.permute(2, 0, 1).reshape(len(seeds), -1)  # (E, width, k) -> (k, E * width)


def _client_losses(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each client's mean cross-entropy over its own (possibly short) batch, shape ``(a,)``
    (``weight``: ``1 / m_k`` on client ``k``'s ``m_k`` valid entries, 0 on padding)."""
    a, b, classes = logits.shape
    ce = nn.functional.cross_entropy(logits.reshape(a * b, classes), y.reshape(-1), reduction="none")
    return (ce.view(a, b) * weight).sum(1)


class _Batcher:
    """Step ``t``'s batch of the first ``active`` clients: epoch ``t // S``, batch ``t % S``.

    The pool rows, labels and loss weights of a block of steps are computed together (a few tensor
    ops per block instead of per step; a block holds about :data:`BLOCK_ENTRIES` indices). A weight
    is ``1 / m`` on each of a batch's ``m`` valid entries and 0 on padding, so a client's mean batch
    loss is the weighted sum."""

    def __init__(
        self,
        data: CohortData,
        rows: torch.Tensor,
        orders: torch.Tensor,
        sizes: torch.Tensor,
        width: int,
        batch_size: int,
        steps: int,
    ) -> None:
        self.data, self.rows, self.orders, self.sizes, self.width = data, rows, orders, sizes, width
        self.per_epoch = (sizes + batch_size - 1) // batch_size  # (k,) batches per epoch
        self.offsets = torch.arange(batch_size, device=sizes.device)  # (B,)
        self.batch_size = batch_size
        self.epochs = orders.shape[1] // max(width, 1)
        per_block = max(1, BLOCK_ENTRIES // max(1, len(sizes) * batch_size))
        self.block = max(1, min(steps, per_block))  # steps prepared at once
        self.start = -self.block - 1  # no block prepared yet
        self.block_rows = self.block_y = rows[:0]
        self.block_weight = data.x.new_empty(0)

    def _prepare(self, t0: int) -> None:
        """Pool rows, labels and weights ``(T, k, B)`` of steps ``t0 .. t0 + block - 1``."""
        k, b = len(self.sizes), self.batch_size
        t = torch.arange(t0, t0 + self.block, device=self.sizes.device).unsqueeze(1)  # (T, 1)
        epoch = (t // self.per_epoch).clamp_max(self.epochs - 1)  # finished clients: unused, in range
        pos = ((t % self.per_epoch) * b).unsqueeze(2) + self.offsets  # (T, k, B) positions in the order
        valid = (pos < self.sizes.view(1, k, 1)).to(self.data.x.dtype)
        self.block_weight = valid / valid.sum(2, keepdim=True)
        pos = pos.clamp_max(self.width - 1) + (epoch * self.width).unsqueeze(2)
        flat = pos.permute(1, 0, 2).reshape(k, -1)  # (k, T * B)
        local = self.orders.gather(1, flat)  # local sample ids
        self.block_rows = self.rows.gather(1, local).view(k, self.block, b).permute(1, 0, 2).contiguous()
        self.block_y = self.data.y[self.block_rows]
        self.start = t0

    def __call__(self, t: int, active: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x (a, B, ...), y (a, B), weight (a, B))`` for step ``t``."""
        if not self.start <= t < self.start + self.block:
            self._prepare(t)
        i = t - self.start
        rows = self.block_rows[i, :active].reshape(-1)  # (a * B,) pool rows
        x = self.data.x.index_select(0, rows).view(active, self.batch_size, *self.data.x.shape[1:])
        return x, self.block_y[i, :active], self.block_weight[i, :active]
