"""Client state survives a round trip through Flower's context.state."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, RecordDict

from stamen.client.context_state import load_state, save_state
from stamen.client.state import ClientState


def _context() -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})


def test_empty_then_roundtrip() -> None:
    ctx = _context()
    assert load_state(ctx) == ClientState()
    state = ClientState(
        arrays={"ef/w": np.arange(6, dtype=np.float32).reshape(2, 3)}, scalars={"dp/steps": 12.0}
    )
    save_state(ctx, state)
    back = load_state(ctx)
    np.testing.assert_array_equal(back.arrays["ef/w"], state.arrays["ef/w"])
    assert back.scalars == {"dp/steps": 12.0}
    save_state(ctx, ClientState(scalars={"dp/steps": 13.0}))  # replaces, does not merge
    assert load_state(ctx).arrays == {} and load_state(ctx).scalars == {"dp/steps": 13.0}
