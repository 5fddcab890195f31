"""The asynchronous driver's settings and the state of the version it is building
(:mod:`stamen.server.driver.async_driver`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AsyncSettings"]


@dataclass(frozen=True)
class AsyncSettings:
    """The numbers the asynchronous loop needs."""

    mode: str  # "fedasync" or "fedbuff"
    versions: int  # model versions to produce
    concurrency: int
    buffer_size: int
    alpha: float
    server_lr: float
    momentum: float
    seed: int
    timeout_s: float
    eval_every: int
    max_trips: int = 0  # tasks per client its privacy calibration assumed (local, dp_sgd, rqm); 0: no cap
    one_row_per_client: bool = False  # central DP: a buffer holds at most one update of each client
    secret_dispatch: bool = False  # whom to send a task: OS entropy, not seed (central DP, noise = secret)


@dataclass
class _Step:
    """What happened since the last model version."""

    rows: list[np.ndarray] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    factors: list[float] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    taus: list[int] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    rejected: int = 0
    client_eps: float | None = None
    started: float = field(default_factory=time.perf_counter)


def idle_clients(clients: Sequence[str], idle: Callable[[str], bool], transport: Any) -> list[str]:
    """``[c for c in clients if idle(c)]``, in order. A transport that can tell at once which of
    ``clients`` are ready (``ready_indices``: a simulator's availability windows, one array
    operation) narrows the scan to those first; ``idle`` still checks each of them."""
    ready = getattr(transport, "ready_indices", None)
    indices = ready(clients) if ready is not None else None
    if indices is None:
        return [c for c in clients if idle(c)]
    return [c for c in (clients[int(i)] for i in indices) if idle(c)]
