"""Worker processes for the in-process engine: a round's clients trained in ``N`` processes.

Each worker holds one model and the run's data (no process per client). A round's jobs are cut into
``N`` contiguous slices (cohort order); every worker trains its slice with
:func:`~stamen.simulations.engines.rows.train_rows` (cohort-batched or the per-client loop) straight
into its rows of one ``(n, d)`` float32 stack in shared memory
(:class:`multiprocessing.shared_memory.SharedMemory`), and returns only the small per-row records
(example counts, metrics, client state). The engine then releases every row in its own process
(local DP, codec, envelope) in cohort order, so the replies, and results.json, do not depend on the
number of workers: every client's update is computed by the same code from the same seed. (The
cohort-batched kernel's float rounding may differ by ~1e-7 between slices of different sizes;
the per-client loop is bit for bit.)

Workers are started with ``spawn`` (a clean interpreter: no forked torch thread pools), which
costs about a second each for importing torch, once per run.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import torch

from stamen.simulations.engines.rows import RowJob, TrainedRow, train_rows
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


def _work(shm_name: str, shape: tuple[int, int], jobs: list[RowJob]) -> list[TrainedRow]:
    """Train ``jobs`` into their rows of the shared stack named ``shm_name``."""
    spec = _WORKER["spec"]
    assert isinstance(spec, WorkerSpec)
    shm = SharedMemory(name=shm_name)
    try:
        stack: np.ndarray = np.ndarray(shape, dtype=np.float32, buffer=shm.buf)
        done: list[TrainedRow] = []
        model, nodes = _WORKER["model"], _WORKER["nodes"]
        assert isinstance(model, torch.nn.Module) and isinstance(nodes, SimulatedNodes)
        train_rows(jobs, model, nodes, stack, spec.batched, torch.device(spec.device), done.extend)
        del stack
        return done
    finally:
        shm.close()


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
    """``workers`` spawned processes training a round's jobs into a shared ``(n, d)`` stack.

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

    def train(self, jobs: Sequence[RowJob], dim: int) -> tuple[np.ndarray, list[TrainedRow]]:
        """The round's ``(len(jobs), dim)`` delta stack (a private copy) and its rows in job order."""
        if self._pool is None:
            raise RuntimeError("the worker pool is closed")
        n = len(jobs)
        shm = SharedMemory(create=True, size=max(n * dim * 4, 1))
        try:
            pending = [
                self._pool.apply_async(_work, (shm.name, (n, dim), [jobs[i] for i in part]))
                for part in slices(n, self.workers)
            ]
            rows = [row for p in pending for row in p.get()]
            stack = np.ndarray((n, dim), dtype=np.float32, buffer=shm.buf).copy()
        finally:
            shm.close()
            shm.unlink()
        rows.sort(key=lambda r: r.index)
        return stack, rows

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
