"""The in-process engine's own state in a server checkpoint (``stamen simulate --state-dir``): the
virtual clients' memory across rounds (error-feedback residuals, DP-SGD step counts:
:class:`~stamen.client.state.ClientState`), each client's trip counter (its trips' jitter and
drop-out draws) and the simulated clock. With them a resumed synchronous simulation repeats, round
for round, what an uninterrupted one would have done (the asynchronous engine adds its work in
flight: :mod:`stamen.simulations.checkpoint_inflight`). A checkpoint written before the trip
counters were kept resumes with them at zero.

(A deployed federation's client memory lives on the SuperNodes, in Flower's ``context.state``,
and does not survive a new run id; see docs/deployment.md, "Restarts".)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stamen.client.state import ClientState
from stamen.server.checkpoint import CheckpointError
from stamen.server.checkpoint_rules import Snapshot, Tree
from stamen.simulations.client_states import ClientStates

if TYPE_CHECKING:  # the engines package imports the plan, which imports this module
    from stamen.simulations.engines.clock import TripMeter


class ClientMemory(Protocol):
    """What :class:`~stamen.simulations.engines.inprocess.InProcessTransport` exposes."""

    states: ClientStates
    clock: float
    meter: TripMeter | None


def capture_clients(transport: ClientMemory, snap: Snapshot) -> Tree:
    """Every client's arrays (into ``snap``) and scalars, spilled ones included, its trip counter,
    and the simulated clock (seconds)."""
    clients = {}
    for pid in sorted(transport.states):
        state = transport.states.peek(pid)
        arrays = [snap.put(f"clients/{pid}/{name}", a) for name, a in sorted(state.arrays.items())]
        clients[str(pid)] = {"arrays": arrays, "scalars": {k: float(v) for k, v in state.scalars.items()}}
    attempts = {} if transport.meter is None else transport.meter.attempts
    return {
        "clock": float(transport.clock),
        "clients": clients,
        "attempts": {str(p): n for p, n in attempts.items()},
    }


def restore_clients(transport: ClientMemory, tree: Any, snap: Snapshot) -> None:
    """Put :func:`capture_clients` back into a fresh transport."""
    if not isinstance(tree, dict) or not isinstance(tree.get("clients"), dict):
        raise CheckpointError(f"checkpoint is corrupt: client memory is {tree!r}")
    states = transport.states
    states.clear()
    for pid, entry in tree["clients"].items():
        try:
            prefix = f"clients/{int(pid)}/"
            arrays = {str(k)[len(prefix) :]: np.array(snap.get(k)) for k in entry["arrays"]}
            scalars = {str(k): float(v) for k, v in entry["scalars"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint is corrupt: client {pid!r} memory: {exc}") from None
        states[int(pid)] = ClientState(arrays, scalars)
    states.settle()
    transport.clock = float(tree.get("clock", 0.0))
    if transport.meter is not None:
        transport.meter.attempts = _attempts(tree.get("attempts", {}))


def _attempts(tree: object) -> dict[int, int]:
    """The trip counters (pid -> trips drawn so far); ``{}`` in an older checkpoint."""
    try:
        attempts = {int(p): int(n) for p, n in tree.items()} if isinstance(tree, dict) else None
    except (TypeError, ValueError):
        attempts = None
    if attempts is None or any(p < 0 or n < 0 for p, n in attempts.items()):
        raise CheckpointError(f"checkpoint is corrupt: trip counters are {tree!r}")
    return attempts


def client_memory_part(transport: ClientMemory) -> tuple[Any, Any]:
    """The ``(capture, restore)`` pair :class:`~stamen.server.checkpoint_run.RunState` takes."""
    return (
        lambda snap: capture_clients(transport, snap),
        lambda tree, snap: restore_clients(transport, tree, snap),
    )
