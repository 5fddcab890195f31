"""A round's local training written into rows of an ``(n, d)`` delta stack, then released.

The in-process engine splits a client round (:func:`stamen.client.node.client_round`) in two:

1. **training** (:func:`train_rows`): each task's ``delta = local - global`` lands in row ``index``
   of a preallocated float32 stack, in :func:`~stamen.protocols.tensor_table` order of the task's
   global weights. Tasks sharing weights and instructions are trained in one cohort-batched call
   (:func:`~stamen.simulations.cohort.train_cohort`) when ``batched``; otherwise each runs the
   client's own :func:`~stamen.client.node.train` (the per-client loop). This half can run in a
   worker process (:func:`train_and_release` runs both halves there);
2. **release** (:func:`release_row`): the client's local DP, codec and envelope, from that row, with
   the client's own state and seed (:func:`~stamen.client.node.release`, the code the ClientApp and
   the serial engine run), giving the :class:`~stamen.server.driver.types.Reply` the round driver
   verifies, decodes and aggregates as any other.

A row holds exactly what the per-client trainer returns (float32 flattening is lossless), so a
released envelope is byte for byte the one :func:`client_round` makes from the same delta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from stamen.client.node import Received, Trained, release, train
from stamen.client.state import ClientState
from stamen.client.trainers import TrainResult
from stamen.protocols import TensorInfo, keys, tensor_table
from stamen.server.driver.collect import flatten
from stamen.server.driver.reply import row_views
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.cohort import CohortData, client_seeds, train_cohort
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.provider import dataset, partitions
from stamen.task.seeds import client_seed

RowsDone = Callable[[list["TrainedRow"]], None]  # called as rows finish (progress, streaming)


@dataclass
class TrainedRow:
    """One task's training, its delta in row ``index`` of the stack.

    Attributes
    ----------
    index : int
        Position of the task in the round's task list (its row).
    num_examples : int
        Training samples (FedAvg weight).
    metrics : dict
        The trainer's metrics (``train-loss``).
    trained : tuple of str or None
        Tensors the trainer may have changed (:class:`~stamen.client.trainers.TrainResult`).
    state : ClientState or None
        The client's state after training, when training may change it (per-client loop).
    seed : int or None
        The client's round seed (``client_seed``), when the trainer already derived it.
    """

    index: int
    num_examples: int
    metrics: dict[str, float]
    trained: tuple[str, ...] | None
    state: ClientState | None = None
    seed: int | None = None


@dataclass(frozen=True)
class RowJob:
    """What a trainer needs of one task: its row, client, weights and round instructions."""

    index: int
    pid: int
    task: TrainTask
    state: ClientState | None = field(default=None, compare=False)


def pid_of(client: str) -> int:
    """The partition id in a simulated client key (``"client-7"`` -> 7)."""
    return int(client.rpartition("-")[2])


def train_rows(
    jobs: Sequence[RowJob],
    model: nn.Module,
    nodes: SimulatedNodes,
    stack: np.ndarray,
    batched: bool,
    device: torch.device,
    done: RowsDone,
    chunk: int = 0,
) -> None:
    """Train ``jobs`` into their rows of ``stack``; ``done`` receives each finished group of rows.

    Batched jobs are grouped by (global weights, instructions) and cut into chunks of ``chunk``
    clients (0: one call per group), so ``done`` can stream rows while later chunks train.
    """
    if not batched:
        for job in jobs:
            done([_train_one(job, model, nodes, stack)])
        return
    for group in _groups(jobs):
        step = chunk if chunk > 0 else len(group)
        for lo in range(0, len(group), step):
            done(_train_batch(group[lo : lo + step], model, nodes, stack, device))


def _groups(jobs: Sequence[RowJob]) -> list[list[RowJob]]:
    """Jobs that share global weights (by hash) and instructions, in task order. Equal instructions
    are matched once per distinct object (hashing a nested dataclass per job costs ~3 us)."""
    groups: dict[tuple[str, int], list[RowJob]] = {}
    canon: dict[int, int] = {}  # id of an instructions object -> id of the first equal one
    distinct: list[object] = []  # the first of each set of equal instructions (alive: jobs hold them)
    for job in jobs:
        instr = job.task.instructions
        key = canon.get(id(instr))
        if key is None:
            first = next((d for d in distinct if d == instr), None)
            if first is None:
                distinct.append(first := instr)
            key = canon[id(instr)] = id(first)
        groups.setdefault((job.task.expected_base, key), []).append(job)
    return list(groups.values())


def _train_one(job: RowJob, model: nn.Module, nodes: SimulatedNodes, stack: np.ndarray) -> TrainedRow:
    """The per-client loop: the client's own :func:`~stamen.client.node.train`."""
    task, state = job.task, job.state if job.state is not None else ClientState()
    assert task.weights is not None  # memory runtime (checked by the engine)
    received = Received(task.instructions, task.weights, base_hash=task.expected_base)
    done = train(nodes.node(job.pid), received, model, state)
    res = done.result
    flatten(res.delta, tensor_table(task.weights), stack[job.index])
    return TrainedRow(job.index, res.num_examples, dict(res.metrics), res.trained, state, done.seed)


def _train_batch(
    jobs: Sequence[RowJob], model: nn.Module, nodes: SimulatedNodes, stack: np.ndarray, device: torch.device
) -> list[TrainedRow]:
    """One cohort-batched call for jobs sharing weights and instructions."""
    first = jobs[0].task
    assert first.weights is not None
    instr = first.instructions
    pids = np.array([j.pid for j in jobs], dtype=np.int64)
    data = _cohort_data(nodes, pids, device)
    seeds = client_seeds(instr.seed, instr.round, pids)
    res = train_cohort(model, first.weights, data, instr.train, seeds)
    rows = np.array([j.index for j in jobs], dtype=np.int64)
    stack[rows] = np.asarray(res.deltas)
    trained = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    return [
        TrainedRow(j.index, int(n), {keys.TRAIN_LOSS: float(loss)}, trained, seed=int(s))
        for j, n, loss, s in zip(jobs, res.num_examples, res.train_loss, seeds, strict=True)
    ]


def _cohort_data(nodes: SimulatedNodes, pids: np.ndarray, device: torch.device) -> CohortData:
    """The cohort's clients as index views into the shared training pool; under a data attack, as
    each client's own (possibly poisoned) arrays."""
    spec = nodes.data
    if spec.data_attack != "none":
        return CohortData.from_clients([nodes.node(int(p)).data.train() for p in pids], device)
    ds = dataset(spec)
    rows, sizes = partitions(spec).rows(pids)
    return CohortData.from_padded(ds.x_train, ds.y_train, rows, sizes, device)


def release_row(
    nodes: SimulatedNodes,
    task: TrainTask,
    row: np.ndarray,
    trained: TrainedRow,
    state: ClientState,
    table: tuple[TensorInfo, ...] | None = None,
) -> Reply:
    """The client's local DP, codec and envelope from its trained ``row``: its reply (``table``:
    ``tensor_table(task.weights)``, when the caller has it)."""
    assert task.weights is not None
    pid, instr = pid_of(task.client), task.instructions
    node = nodes.node(pid)
    table = tensor_table(task.weights) if table is None else table
    result = TrainResult(row_views(row, table), trained.num_examples, trained.metrics, trained.trained)
    seed = trained.seed if trained.seed is not None else client_seed(instr.seed, instr.round, node.seed_id)
    payload, metrics = release(node, instr, Trained(result, task.expected_base, seed), state)
    return Reply(task.client, envelope=payload, metrics=dict(metrics), nbytes=len(payload))


@dataclass
class Released:
    """One task's reply (its released envelope) and its client's state after the round."""

    index: int
    reply: Reply
    state: ClientState


def train_and_release(
    jobs: Sequence[RowJob],
    dim: int,
    model: nn.Module,
    nodes: SimulatedNodes,
    batched: bool,
    device: torch.device,
) -> list[Released]:
    """Train ``jobs`` into a private ``(len(jobs), dim)`` stack, then release every row with its
    client's own state and seed, in job order: what a worker process (or the engine itself) returns."""
    local = [replace(job, index=k) for k, job in enumerate(jobs)]
    stack, done = np.empty((len(jobs), dim), dtype=np.float32), list[TrainedRow]()
    train_rows(local, model, nodes, stack, batched, device, done.extend)
    done.sort(key=lambda r: r.index)
    out, tables = [], dict[int, tuple[TensorInfo, ...]]()  # by id of the (shared) weights
    for job, row in zip(jobs, done, strict=True):
        state = row.state if row.state is not None else job.state if job.state is not None else ClientState()
        weights = job.task.weights
        assert weights is not None  # memory runtime (checked by the engine)
        table = tables.get(id(weights)) or tables.setdefault(id(weights), tensor_table(weights))
        reply = release_row(nodes, job.task, stack[row.index], row, state, table)
        out.append(Released(job.index, reply, state))
    return out
