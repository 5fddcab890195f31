"""``[engine]``: how the in-process engine runs a round's clients (simulation only).

``batching`` picks the training path: ``"auto"`` trains a round's cohort in one cohort-batched call
(:mod:`stamen.simulations.cohort`) when the model and trainer allow it and falls back to the
per-client loop otherwise, with the reason recorded; ``"off"`` always runs the per-client loop;
``"on"`` refuses the run (one line naming the reason) when the cohort cannot be batched.

``workers`` is the number of processes that train a round's clients, each holding one model (no
process per client): the engine's own, which trains the first slice of every round, and ``workers -
1`` worker processes, which train the others and release their clients' envelopes too. ``0`` picks
for the machine (:func:`resolve_workers`: one process for a cohort-batched run, whose kernel already
uses the cohort), ``1`` trains in the engine's own process only. Results do not depend on it: every
client's update is computed by the same code from the same seed.

``threads`` is the number of torch threads of the engine's own process (default 1, the per-client
loop's numerics; worker processes always use one each). On 2 cores a second thread measured between
10 % slower and 12 % faster per round for 100 to 1,000 clients a round (BENCHMARKS.md §1), so it
is not picked automatically; try it on machines with more cores. More than one thread needs
``workers = 1`` (workers train on one thread; mixing counts would tie results to the pool's start).
A run is deterministic for a given thread count; two counts may differ in the last bits of the
weights.

``device`` is where the cohort-batched kernel runs: ``"auto"`` (``cuda`` when a GPU is visible),
``"cpu"`` or ``"cuda"``. The per-client loop always runs on the CPU.

``state_memory_mb`` bounds the virtual clients' memory across rounds (error-feedback residuals, DP
step counts) held in RAM after each round; the least recently used spill to a temporary directory
and are read back when their client is sampled again (:mod:`stamen.simulations.client_states`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from stamen.task.settings_base import _Config, _f

BATCHING: tuple[str, ...] = ("auto", "off", "on")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
MAX_AUTO_WORKERS = 8
"""``workers = 0`` never starts more processes than this."""
AUTO_MIN_UPDATES = 5000
"""``workers = 0`` keeps a run of fewer client updates (rounds x per round) in one process: a worker
costs about a second to start (importing torch), more than a small run's training."""


@dataclass(frozen=True)
class EngineConfig(_Config):
    """``[engine]``: the training path, worker processes and device of the in-process engine."""

    SECTION: ClassVar[str] = "engine"
    batching: str = _f("auto", choices=BATCHING)
    workers: int = _f(0, ge=0, le=256)
    device: str = _f("auto", choices=DEVICES)
    threads: int = _f(1, ge=1, le=256)
    state_memory_mb: int = _f(1024, ge=0, le=1 << 20)


def resolve_workers(
    workers: int, updates: int, device: str, cpus: int | None = None, *, batched: bool = False
) -> int:
    """The number of training processes for ``workers`` (0 = automatic).

    Parameters
    ----------
    workers : int
        ``[engine] workers``; ``>= 1`` is returned as given.
    updates : int
        Client updates the run will compute (rounds x clients per round).
    device : str
        Resolved device of the cohort kernel (``"cpu"`` or ``"cuda"``): one process owns a GPU.
    cpus : int, optional
        CPUs available; default ``os.cpu_count()``.
    batched : bool
        The cohort is trained cohort-batched: one process (its kernel already uses the cohort, and
        in worker processes it was measured slower on 2 cores, BENCHMARKS.md §18).

    Returns
    -------
    int
        ``min(cpus, 8)`` for a per-client CPU run of at least :data:`AUTO_MIN_UPDATES` updates,
        else 1.
    """
    if workers >= 1:
        return workers
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    if device == "cuda" or batched or updates < AUTO_MIN_UPDATES:
        return 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))
