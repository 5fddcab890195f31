"""The asynchronous driver's settings and the state of the version it is building
(:mod:`stamen.server.driver.async_driver`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
