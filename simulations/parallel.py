"""Worker processes for the in-process engine: a round's clients trained and released in ``N``
processes.

Each worker holds one model and the run's data (no process per client). A round's jobs are cut into
``N`` contiguous slices (cohort order); every worker trains its slice with
:func:`~stamen.simulations.engines.rows.train_rows` (cohort-batched or the per-client loop) into its
own ``(k, d)`` stack and then releases each row (local DP, codec, envelope) with the client's own
state and seed (:func:`~stamen.simulations.engines.rows.train_and_release`, the code the engine runs
in one process). It returns the envelopes and the clients' updated states; the round driver then
verifies, decodes and stacks the envelopes into the round's preallocated ``(n, d)`` stack as for any
transport. An envelope of the dense codec is the row plus ~120 bytes of header, so returning it
costs what returning the row through shared memory did, and the release -- a third of a batched
round's work outside the kernel -- runs in parallel too. The replies, and results.json, do not
depend on the number of workers: every client's update is computed and released by the same code
from the same seed and state. (The cohort-batched kernel's float rounding may differ by ~1e-7
between slices of different sizes; the per-client loop is bit for bit.)

Workers are started with ``spawn`` (a clean interpreter: no forked torch thread pools), which
costs about a second each for importing torch, once per run.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool

import torch

from stamen.simulations.engines.rows import Released, RowJob, train_and_release
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.provider import DataSpec
from stamen.task.models import model_structure
from stamen.task.spec import TaskSpec

_WORKER: dict[str, object] = {}  # the worker process's model and nodes (set by _init)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds once: the model structure, the virtual clients' data and the device."""

    task: TaskSpec
    data: DataSpec
    peer: bool
    batched: bool
    device: str = "cpu"


def _init(spec: WorkerSpec) -> None:
    """Worker start: one thread (the serial engine's numerics), one model, the clients' data."""
    torch.set_num_threads(1)
    _WORKER["spec"] = spec
    _WORKER["model"] = model_structure(spec.task)
    _WORKER["nodes"] = SimulatedNodes(spec.data, spec.peer)


def _work(jobs: list[RowJob], dim: int) -> list[Released]:
    """Train and release ``jobs`` (a contiguous slice of the round's tasks)."""
    spec, model, nodes = _WORKER["spec"], _WORKER["model"], _WORKER["nodes"]
    assert isinstance(spec, WorkerSpec) and isinstance(model, torch.nn.Module)
    assert isinstance(nodes, SimulatedNodes)
    return train_and_release(jobs, dim, model, nodes, spec.batched, torch.device(spec.device))


def slices(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into at most ``parts`` contiguous, non-empty slices whose sizes differ by at
    most one (the first ``n % parts`` are one longer)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    parts = min(parts, n)
    base, extra = divmod(n, parts) if parts else (0, 0)
    out, lo = [], 0
    for k in range(parts):
        hi = lo + base + (1 if k < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return out


class WorkerPool:
    """``workers`` spawned processes training and releasing a round's jobs.

    Parameters
    ----------
    spec : WorkerSpec
        What each worker builds at start.
    workers : int
        Processes, ``>= 2`` (one process is the engine's own loop).
    """

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"a worker pool needs >= 2 workers, got {workers}")
        self.workers = workers
        self._pool: Pool | None = mp.get_context("spawn").Pool(workers, _init, (spec,))

    def run(self, jobs: Sequence[RowJob], dim: int) -> list[Released]:
        """Every job trained and released, in job order (``dim``: the model's parameter count).

        One contiguous slice per worker. (Smaller chunks streamed to the round driver, so that it
        verifies early ones while the workers train later ones, measured slower on 2 cores: the
        engine process then competes with both workers for the cores.)"""
        if self._pool is None:
            raise RuntimeError("the worker pool is closed")
        pending = [
            self._pool.apply_async(_work, ([jobs[i] for i in part], dim))
            for part in slices(len(jobs), self.workers)
        ]
        return [out for p in pending for out in p.get()]

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
