"""Which path the in-process engine takes: cohort-batched or per-client training, in how many
processes, on which device; and why not the fast path when it cannot (recorded once per run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stamen.simulations.cohort import cannot_batch_reason, default_device, module_reason
from stamen.simulations.engine_config import resolve_workers
from stamen.simulations.scenario import Scenario
from stamen.task.spec import TaskSpec, TrainSpec


@dataclass(frozen=True)
class EnginePath:
    """The resolved ``[engine]`` of a run.

    Attributes
    ----------
    batched : bool
        Train each round's cohort in one cohort-batched call.
    workers : int
        Training processes (1: the engine's own).
    device : torch.device
        Where the cohort-batched kernel runs.
    fallback : str or None
        Why the cohort is not batched (``None`` when it is).
    serial : str or None
        Why the run stays in one process although more workers were asked for (``None`` otherwise).
    threads : int
        Torch threads of the engine's own process.
    rows : bool
        A round's clients can be trained apart from the engine, into rows of a stack
        (:func:`serial_reason` is None): the per-client loop trains a chunk of them back to back,
        then releases them (:mod:`~stamen.simulations.engines.chunks`).
    """

    batched: bool
    workers: int
    device: torch.device
    fallback: str | None = None
    serial: str | None = None
    threads: int = 1
    rows: bool = False

    def describe(self) -> dict[str, Any]:
        """What results.json records under ``engine_path``."""
        return {
            "training": "cohort-batched" if self.batched else "per-client",
            "workers": self.workers,
            "device": self.device.type if self.batched else "cpu",
            "fallback": self.fallback,
            "single_process": self.serial,
            "threads": self.threads,
        }


def serial_reason(s: Scenario, peer: bool) -> str | None:
    """Why a round's clients cannot be trained apart from the engine (rows of a stack), or None."""
    if s.server.mode != "sync":
        return f"server.mode={s.server.mode!r}: asynchronous modes dispatch one client at a time"
    if s.clients.runtime == "edge":
        return "clients.runtime='edge': every device applies its own signed delta to its store"
    if peer:
        return "Bristle's peer mode: each client integrates its own relayed inbox"
    return None


def batching_reason(s: Scenario, task: TaskSpec, train: TrainSpec, model: nn.Module) -> str | None:
    """Why the cohort cannot be batched (``None`` when it can): settings first, then the model."""
    if s.engine.batching == "off":
        return "engine.batching='off'"
    return cannot_batch_reason(task, train) or module_reason(model)


def resolve_path(s: Scenario, task: TaskSpec, train: TrainSpec, model: nn.Module, peer: bool) -> EnginePath:
    """The run's :class:`EnginePath`; ``ValueError`` (one line) for ``engine.batching = 'on'`` when
    the cohort cannot be batched, or ``device = 'cuda'`` without a GPU."""
    apart = serial_reason(s, peer)
    fallback = apart or batching_reason(s, task, train, model)
    if fallback is not None and s.engine.batching == "on":
        raise ValueError(f"engine.batching='on' but this run cannot be cohort-batched: {fallback}")
    device = _device(s.engine.device)
    workers = resolve_workers(
        s.engine.workers,
        s.rounds * s.clients.per_round,
        device.type if fallback is None else "cpu",
        batched=fallback is None,
    )
    serial = None
    if apart is not None and workers > 1:
        serial, workers = apart, 1
    if s.engine.threads > 1 and workers > 1:  # workers train on one thread: results would depend on timing
        raise ValueError(
            f"engine.threads={s.engine.threads} needs one training process (set engine.workers=1; "
            f"this run resolves to {workers})"
        )
    return EnginePath(fallback is None, workers, device, fallback, serial, s.engine.threads, apart is None)


def _device(name: str) -> torch.device:
    if name == "auto":
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("engine.device='cuda' but no CUDA device is visible (use 'auto' or 'cpu')")
    return torch.device(name)
