"""Persist a :class:`~stamen.client.state.ClientState` in Flower's ``context.state``.

The SuperNode keeps ``context.state`` (a ``RecordDict``) across the messages of a run, including
when it starts a fresh ClientApp process per message, so this is where per-client memory lives in
deployment and in Flower's simulation engine.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, MetricRecord

from stamen.client.state import ClientState

STATE_KEY = "stamen.state"


def load_state(context: Context) -> ClientState:
    """Read the client's state (empty on the first message of a run)."""
    arrays = context.state.array_records.get(STATE_KEY)
    scalars = context.state.metric_records.get(STATE_KEY + ".scalars")
    return ClientState(
        arrays={k: a.numpy() for k, a in arrays.items()} if arrays is not None else {},
        scalars={k: float(v) for k, v in scalars.items() if isinstance(v, (int, float))}
        if scalars is not None
        else {},
    )


def save_state(context: Context, state: ClientState) -> None:
    """Write ``state`` back into ``context.state`` (replacing the previous one)."""
    context.state[STATE_KEY] = ArrayRecord({k: Array(v) for k, v in state.arrays.items()})
    context.state[STATE_KEY + ".scalars"] = MetricRecord(dict(state.scalars))
