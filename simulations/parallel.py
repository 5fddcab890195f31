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

On Linux, for CPU training, workers are forks of the engine's process (:func:`_fork_is_safe`): they
start in milliseconds with torch, stamen and the loaded data already there (the data's pages shared
until written). Elsewhere (CUDA, another Python thread alive, no ``fork``) they start from a
``forkserver`` that has imported torch and stamen once per engine process (``spawn`` where there is
no forkserver): the first pool of a process pays one torch import, later pools start in
milliseconds. The pool starts in a background thread; until its workers are up the engine
trains the same slices itself (:meth:`WorkerPool.slices_of`, the same results), so a short run never
waits for its workers. A worker process that exits (killed for memory, or failing at start, e.g. on
data it cannot load) is noticed within :data:`_POLL_S` during a round, or by the next
:meth:`~WorkerPool.ready`: the pool is stopped at once (its processes killed; ``multiprocessing``
would replace them, a worker that fails at start forever), the engine logs why, trains
itself every slice of the round left unanswered (the lost one and those of the workers being killed)
and every later round in its own process (``WorkerPool.broken``). The same code and seeds: the same
results.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from multiprocessing.pool import AsyncResult, Pool
from multiprocessing.process import BaseProcess

import torch

from stamen.simulations.engines.rows import Released, RowJob, train_and_release
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.provider import DataSpec, dataset, partitions
from stamen.task.models import model_structure
from stamen.task.spec import TaskSpec

log = logging.getLogger("stamen.simulations")
_Context = ForkContext | ForkServerContext | SpawnContext
_POLL_S = 0.5  # how often a round waiting on its workers checks that they are alive
_STOP_S = 5.0  # how long stopping a broken pool waits for each step
_WORKER: dict[str, object] = {}  # the worker process's model and nodes (set by _init)
# What the forkserver imports once, so a worker forked from it starts warm: torch and stamen. (Not
# torch._dynamo, about 1 s more, which the first torch.optim step of a process imports: only the
# DP-SGD trainer steps with torch.optim; stamen.client.trainers.optim.)
_PRELOAD = ["torch", "stamen.simulations.parallel"]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds once: the model structure, the virtual clients' data and the device."""

    task: TaskSpec
    data: DataSpec
    peer: bool
    batched: bool
    device: str = "cpu"


def _init(spec: WorkerSpec) -> None:
    """Worker start: one thread (the serial engine's numerics), one model, the clients' data.
    Ctrl-C is the engine's to handle (it stops the pool): a worker ignores SIGINT, which a terminal
    sends to the whole process group, instead of printing its own KeyboardInterrupt report. SIGTERM,
    which stops the pool mid-round, ends a worker at once: a fork of the engine would otherwise
    keep the engine's handler (SIGTERM raising KeyboardInterrupt) and print that report. What it
    loaded is frozen out of the garbage collector's walks, as the engine's process freezes its own
    (:mod:`~stamen.simulations.engines.gc_freeze`): a full collection in either stalls a round."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    _WORKER["spec"] = spec
    _WORKER["model"] = model_structure(spec.task)
    _WORKER["nodes"] = SimulatedNodes(spec.data, spec.peer)
    dataset(spec.data), partitions(spec.data)  # cached per process: loaded now, not in round 1
    gc.freeze()  # the worker's lifetime (a process of its own)


def _noop() -> None:
    """A process that does nothing (started to wait for the forkserver's imports)."""


def _fork_is_safe(device: str) -> bool:
    """Whether a worker may be a ``fork`` of the engine's process: on Linux, for CPU training (a
    forked CUDA context is unusable), and with no Python thread but the caller's (blocked while the
    fork is made): a lock another thread held at the fork would stay held in the child. A forked
    worker sets one torch thread before any torch work, so it never enters the engine's OpenMP pool
    (what PyTorch's own fork-started data-loader workers rely on)."""
    if not sys.platform.startswith("linux") or "fork" not in mp.get_all_start_methods():
        return False
    if device != "cpu" or torch.cuda.is_initialized():
        return False
    return all(t is threading.current_thread() for t in threading.enumerate())


def context(device: str = "cpu") -> _Context:
    """The start method: ``fork`` of the engine where that is safe (:func:`_fork_is_safe`: the
    worker inherits torch, stamen and the loaded data, milliseconds), else a forkserver preloaded
    with torch and stamen (seconds, once per process), else ``spawn``."""
    if _fork_is_safe(device):
        return mp.get_context("fork")
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # no effect once this process's forkserver runs
    return ctx


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
    """``workers`` processes training and releasing a round's jobs.

    A round is cut into ``workers`` slices: the engine's process trains and releases the first
    itself while ``workers - 1`` worker processes do the others (so every core computes; the engine
    then verifies and aggregates). Forks of the engine are made before the constructor returns
    (milliseconds); from the forkserver the workers start in a background thread (the first pool of
    a process waits for its imports, seconds): until they are up :meth:`ready` is false, and the
    engine trains every slice itself (:meth:`slices_of`, the same results).

    Parameters
    ----------
    spec : WorkerSpec
        What each worker builds at start.
    workers : int
        Training processes, ``>= 2``: the engine's own and ``workers - 1`` worker processes.
    """

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"a worker pool needs >= 2 workers, got {workers}")
        self.workers = workers
        self._pool: Pool | None = None
        self._closed = self._busy = False  # _busy: a round is in the workers
        self._used = self._creating = False  # a round was handed to the workers; forking
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.broken: str | None = None  # why the workers are no longer used (a worker died)
        self._procs: list[BaseProcess] = []  # the pool's first workers (they never exit on their own)
        ctx = context(spec.device)
        self.start_method = ctx.get_start_method()
        self._starting = threading.Thread(
            target=self._start, args=(spec, ctx), name="stamen-workers", daemon=True
        )
        self._begin()

    def _begin(self) -> None:
        """Start the starting thread and, forking, wait for it (milliseconds; this thread holds
        nothing meanwhile). A Ctrl-C meanwhile closes the pool (no caller holds it yet to close it)
        and goes on once the thread has begun (and the forks are made)."""
        interrupted: KeyboardInterrupt | None = None
        try:
            self._starting.start()
        except KeyboardInterrupt as exc:  # start() was waiting for the thread to begin: it runs
            interrupted = exc
        while self.start_method == "fork" and self._starting.is_alive():
            try:
                self._starting.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            self.close()
            raise interrupted

    def _start(self, spec: WorkerSpec, ctx: _Context) -> None:
        """Start the forkserver (the slow part: it imports torch), then, unless closed meanwhile,
        the pool (forks of it, or of the engine: milliseconds; :meth:`close` waits for that part
        only)."""
        try:
            if ctx.get_start_method() == "forkserver":  # a first fork returns once it has imported
                warm = ctx.Process(target=_noop, name="stamen-forkserver-warm-up")
                warm.start()
                warm.join()
            with self._lock:
                if self._closed:
                    return
                self._creating = True
            pool = ctx.Pool(self.workers - 1, _init, (spec,))
        except BaseException as exc:  # re-raised in the engine's thread by ready()
            self._error, self._creating = exc, False
            return
        with self._lock:
            self._creating = False
            if not self._closed:
                self._pool, self._procs = pool, _pool_internals(pool)[0]
                return
        _stop(pool, graceful=True)  # the run ended while its workers were being forked

    def ready(self, wait: bool = False) -> bool:
        """Whether the worker processes are up (``wait``: block until they are).

        Raises
        ------
        RuntimeError
            If they could not be started (naming why).
        """
        if wait and not self._closed:
            self._starting.join()
        if self._error is not None:
            raise RuntimeError(f"the worker pool did not start: {self._error}") from self._error
        up = not self._starting.is_alive() and self._pool is not None and not self._closed
        if up:
            self._check()  # a worker that died between rounds (its replacement never gets a task)
        return up and self.broken is None

    def slices_of(self, jobs: Sequence[RowJob]) -> list[list[RowJob]]:
        """``jobs`` cut into the workers' contiguous slices, in job order."""
        return [[jobs[i] for i in part] for part in slices(len(jobs), self.workers)]

    def run(
        self, jobs: Sequence[RowJob], dim: int, here: Callable[[list[RowJob]], list[Released]]
    ) -> list[Released]:
        """Every job trained and released, in job order (``dim``: the model's parameter count): the
        first slice by ``here`` in this process while the workers train the others; waits for the
        workers if they are still starting.

        One contiguous slice per process, returned together. (Streaming slices to the round driver,
        so that it verifies the engine's own slice while the workers train theirs, measured slower
        on 2 cores for the cohort-batched path and no faster for the per-client loop.)"""
        up, pool = self.ready(wait=True), self._pool
        if self._closed or (not up and self.broken is None):
            raise RuntimeError("the worker pool is closed")
        if not up or pool is None:  # broken (and stopped) since the caller asked
            return [out for part in self.slices_of(jobs) for out in here(part)]
        self._used = self._busy = True
        first, *others = self.slices_of(jobs) or [[]]
        pending = [pool.apply_async(_work, (part, dim)) for part in others]
        done = here(first)
        for part, result in zip(others, pending, strict=True):
            done += self._gather(result, part, here)
        self._check()
        self._busy = False  # (left True by an error or an interrupt: close() then terminates)
        return done

    def _gather(
        self,
        result: AsyncResult[list[Released]],
        part: list[RowJob],
        here: Callable[[list[RowJob]], list[Released]],
    ) -> list[Released]:
        """A worker's slice, or the same slice trained by ``here`` once a worker has died: a dead
        worker's task is never answered (the pool replaces the process, not its task), and the
        other workers are killed with the pool (:meth:`_check`), so every slice not answered by
        then is trained here (the same code and seeds as in the worker)."""
        while self.broken is None:
            try:
                return result.get(timeout=_POLL_S)
            except mp.TimeoutError:
                self._check()
        return result.get() if result.ready() else here(part)

    def _check(self) -> None:
        """If a worker exited: mark the pool broken (the engine then trains every slice itself) and
        stop it now, not at :meth:`close` (``multiprocessing.Pool`` replaces an exited worker; one
        that fails in :func:`_init` would be forked again and again for the rest of the run)."""
        dead = next((p for p in self._procs if p.exitcode is not None), None)
        if dead is None or self.broken is not None:
            return
        with self._lock:  # close() takes the pool under the same lock: one of the two stops it
            if self.broken is not None:
                return
            self.broken = f"worker process {dead.pid} exited with code {dead.exitcode}"
            pool, self._pool = self._pool, None
        log.warning("%s: workers stopped; the engine trains every slice itself", self.broken)
        if pool is None:
            return
        try:
            _stop(pool, graceful=False, broken=True)
        except BaseException:  # e.g. Ctrl-C while it waits: close() then stops what is left
            with self._lock:
                self._pool = pool if self._pool is None else self._pool
            raise

    def close(self) -> None:
        """Stop the workers (idempotent). A forkserver still starting is not waited for: no pool
        is made once it is up."""
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
            creating = self._creating
        if creating:  # forking: wait (ms), the start thread then stops those workers itself
            self._starting.join()
        if pool is not None:
            self._check()
            _stop(pool, graceful=not self._busy, broken=self.broken is not None)


def _pool_internals(pool: Pool) -> tuple[list[BaseProcess], threading.Thread | None]:
    """``pool``'s worker processes now, and the thread that replaces those that exit.

    ``multiprocessing.Pool`` has no public API for either: CPython keeps them as ``_pool`` and
    ``_worker_handler``, and this is the only place they are read. On a Python without them the
    answer is ``([], None)``: a worker that dies is then noticed only by a round that waits on it
    forever (no worker to check), and stopping a broken pool waits up to :data:`_STOP_S` for
    ``terminate`` before killing what is left (nothing known)."""
    procs, handler = getattr(pool, "_pool", None), getattr(pool, "_worker_handler", None)
    return (
        list(procs) if isinstance(procs, list) else [],
        handler if isinstance(handler, threading.Thread) else None,
    )


def _stop(pool: Pool, graceful: bool, broken: bool = False) -> None:
    """Stop ``pool``'s workers: between rounds they are told to exit (a worker just forked may still
    be reading its start-up arguments, the pool's semaphores, which terminating the pool would
    delete under it); a round interrupted in the workers is terminated. A ``broken`` pool (a worker
    died) may have lost its task queue's lock with the dead worker, where ``terminate`` and ``join``
    would wait forever: ``terminate`` runs in a daemon thread, never waited for (the first thing it
    does is tell the pool's worker handler to stop replacing workers: that thread's exit is waited
    for, at once), and the worker processes are then killed directly."""
    if broken:
        stopper = threading.Thread(target=pool.terminate, name="stamen-workers-stop", daemon=True)
        stopper.start()
        handler = _pool_internals(pool)[1]
        (stopper if handler is None else handler).join(timeout=_STOP_S)  # no worker forked after
        for proc in _pool_internals(pool)[0]:
            if proc.exitcode is None:  # polled first: a dead worker's PID may already be reused
                proc.kill()
            proc.join(timeout=_STOP_S)
        return
    if graceful:
        pool.close()
    else:
        pool.terminate()
    pool.join()
