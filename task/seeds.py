"""Per-client seeds shared by clients, the server and both engines, and the seeds of DP draws."""

from __future__ import annotations

import secrets

import numpy as np

from stamen.task.settings import NOISE_SOURCES


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Deterministic 63-bit seed for one client in one round (independent streams per triple)."""
    state = np.random.SeedSequence([seed, server_round, partition_id]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def dp_seed(noise: str, seeded: int, bits: int = 128) -> int:
    """The seed of one differentially private random draw (``privacy.noise``).

    ``"secret"``: ``bits`` fresh bits of OS entropy (:func:`secrets.randbits`), drawn at every call
    and never derived from the run seed, which every client receives in its instructions: nobody
    else can rebuild the draw. ``"seeded"``: ``seeded`` itself (derived from the public run seed:
    reproducible, and no guarantee against anyone who knows the seed). ``bits = 64`` for a
    ``torch.Generator``, whose ``manual_seed`` takes at most 64 bits.

    Raises
    ------
    ValueError
        If ``noise`` is not one of :data:`~stamen.task.settings.NOISE_SOURCES`.
    """
    if noise == "seeded":
        return seeded
    if noise != "secret":
        raise ValueError(f"privacy.noise must be one of {NOISE_SOURCES}, got {noise!r}")
    return secrets.randbits(bits)
