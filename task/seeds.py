"""Deterministic per-client seeds, shared by clients, the server and both engines."""

from __future__ import annotations

import numpy as np


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Deterministic 63-bit seed for one client in one round (independent streams per triple)."""
    state = np.random.SeedSequence([seed, server_round, partition_id]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
