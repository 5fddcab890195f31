"""The in-process engine's own state in a server checkpoint (``stamen simulate --state-dir``): the
virtual clients' memory across rounds (error-feedback residuals, DP-SGD step counts:
:class:`~stamen.client.state.ClientState`) and the simulated clock. With them a resumed
synchronous simulation repeats, round for round, what an uninterrupted one would have done.

(A deployed federation's client memory lives on the SuperNodes, in Flower's ``context.state``,
and does not survive a new run id; see docs/deployment.md, "Restarts".)
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from stamen.client.state import ClientState
from stamen.server.checkpoint import CheckpointError
from stamen.server.checkpoint_rules import Snapshot, Tree
from stamen.simulations.client_states import ClientStates


class ClientMemory(Protocol):
    """What :class:`~stamen.simulations.engines.inprocess.InProcessTransport` exposes."""

    states: ClientStates
    clock: float


def capture_clients(transport: ClientMemory, snap: Snapshot) -> Tree:
    """Every client's arrays (into ``snap``) and scalars, spilled ones included, and the simulated
    clock (seconds)."""
    clients = {}
    for pid in sorted(transport.states):
        state = transport.states.peek(pid)
        arrays = [snap.put(f"clients/{pid}/{name}", a) for name, a in sorted(state.arrays.items())]
        clients[str(pid)] = {"arrays": arrays, "scalars": {k: float(v) for k, v in state.scalars.items()}}
    return {"clock": float(transport.clock), "clients": clients}


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


def client_memory_part(transport: ClientMemory) -> tuple[Any, Any]:
    """The ``(capture, restore)`` pair :class:`~stamen.server.checkpoint_run.RunState` takes."""
    return (
        lambda snap: capture_clients(transport, snap),
        lambda tree, snap: restore_clients(transport, tree, snap),
    )
