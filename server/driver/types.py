"""What the driver sends one client, what comes back, and how it travels.

A client is named by a *client key*: ``"client-<partition id>"`` for a simulated client,
``"node-<node id>"`` for a deployed SuperNode. The key comes from the transport (the authenticated
node behind the reply), never from anything the client reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from stamen.protocols import Verifier
from stamen.protocols.patch import ModelPatch
from stamen.task.spec import RoundInstructions

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainTask:
    """One client's work for one round.

    Attributes
    ----------
    client : str
        The client key the reply must come from.
    instructions : RoundInstructions
        The round's task, training spec and codec (the same for the whole round).
    weights : dict or None
        The full global model (``clients.runtime = "memory"``), or None.
    downlink : bytes or None
        A signed delta envelope against the version the device holds (``"edge"``), or None.
    expected_base : str
        ``model_hash`` of what the client will train from; its envelope must name it.
    extra : mapping
        Mode-specific payload (Bristle peer mode: the relayed inbox).
    patch : ModelPatch or None
        The cached downlink (``clients.downlink = "cached"``): a ``"cache"`` mark on the full
        ``weights``, or the patch from the version the client holds (``weights`` is then None).
    """

    client: str
    instructions: RoundInstructions
    weights: Weights | None
    downlink: bytes | None
    expected_base: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    patch: ModelPatch | None = None


class Payload(NamedTuple):
    """What a downlink sends one client: full ``weights``, a signed edge ``delta``, or a ``patch``
    (with or without the weights), and ``base``, the hash the client will train from."""

    weights: Weights | None
    delta: bytes | None
    base: str
    patch: ModelPatch | None = None


@dataclass
class Reply:
    """One client's answer, as the transport received it.

        Exactly one of ``envelope`` (a packed stamen Envelope), ``weights`` (a plain Flower client's full
        local weights) or ``error`` is set. ``metrics`` holds the client's reported numbers (untrusted).
        ``nbytes`` is what really arrived. On a deployed grid the transport sets ``verifier`` to the key
    the authenticated sending node endorsed (or ``identity_error``); its envelope must verify with it.
    """

    client: str
    envelope: bytes | None = None
    weights: Weights | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    nbytes: int = 0
    verifier: Verifier | None = None  # the sending node's endorsed update key (a deployment)
    identity_error: str | None = None  # why the sender's identity record did not verify
    held: str | None = None  # an edge device that could not apply its delta: the model hash it holds
    trip_s: float = math.nan  # simulated seconds from dispatch to arrival (a simulation's timing model)
    # the dispatch this reply answers, as the transport recorded it (Flower: the message it replies
    # to; the virtual clock: the arrival scheduled at push). None: matched by client (one task each)
    task: TrainTask | None = field(default=None, compare=False, repr=False)


class Transport(Protocol):
    """How train tasks reach clients and replies come back."""

    def clients(self) -> Sequence[str]:
        """The available clients' keys, in a canonical order (sampling indexes into it)."""
        ...

    def train(self, tasks: Sequence[TrainTask], timeout: float) -> list[Reply]:
        """Run ``tasks`` and return the replies that arrived within ``timeout`` seconds.

        A transport may also offer ``train_stream(tasks, timeout) -> Iterator[list[Reply]]``: the
        same replies in cohort order, chunk by chunk, which the round driver verifies as they come
        (:meth:`~stamen.server.driver.driver.RoundDriver.train_and_collect`)."""
        ...

    def now(self) -> float:
        """Simulated seconds since the run started (a simulation's client timing), else NaN."""
        ...


def client_index(client: str) -> int:
    """The number in a client key (``"client-3"`` -> 3, ``"node-77"`` -> 77): the per-client seed stream."""
    tail = client.rpartition("-")[2]
    if not tail.isdigit():
        raise ValueError(f"client key {client!r} does not end in a number")
    return int(tail)


class AsyncTransport(Protocol):
    """Tasks go out one by one; replies come back as they arrive."""

    def clients(self) -> list[str]:
        """The available clients' keys."""
        ...

    def ready(self, client: str) -> bool:
        """Whether ``client`` can take a task now (connected, inside its availability window)."""
        ...

    def push(self, task: TrainTask) -> None:
        """Start ``task`` on its client."""
        ...

    def pull(self, timeout: float) -> list[Reply]:
        """The replies that arrived (in arrival order); ``[]`` when none came within ``timeout``."""
        ...

    def now(self) -> float:
        """The transport's clock, in seconds (simulated on a virtual clock)."""
        ...

    def wait_ready(self, eligible: Callable[[str], bool] | None = None) -> bool:
        """Nothing is in flight and no client is ready: wait until one of those ``eligible`` takes
        (all by default) is (a virtual clock moves to that moment; a deployment waits, bounded, for a
        node); False when none became ready."""
        ...

    def advance_to_window(self, eligible: Callable[[str], bool] | None = None) -> bool:
        """Tasks are in flight, a slot is free and no idle client is ready: a virtual clock moves to
        the next availability-window opening of an idle client ``eligible`` takes when it comes
        before the next arrival (True: dispatch again); False otherwise, and always for a
        deployment (its clients are ready when connected)."""
        ...
