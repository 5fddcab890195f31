"""A cohort's per-trip random draws at once, bit for bit what one generator per trip gives.

:meth:`~stamen.simulations.timing.ClientTiming.trip` draws a trip's compute jitter and its two
uniforms from ``np.random.default_rng([seed, tag, client, attempt])``. Building that generator costs
about 11 us (a ``SeedSequence``, then ``PCG64``'s seeding), a sixth of a cohort-batched round's
per-client budget. Here the ``SeedSequence`` states of the whole cohort are hashed in one vectorised
pass (:func:`~stamen.simulations.cohort.seeds.seed_sequence_states`), PCG64's seeding is done on
Python integers (numpy's ``pcg64_set_seed``: ``state = 0; inc = 2 * initseq + 1; step; state +=
initstate; step``, 128-bit arithmetic) and one reusable generator is set to each state before its
three draws, the same calls in the same order as the scalar path. A test holds both equal.
"""

from __future__ import annotations

import numpy as np

from stamen.simulations.cohort.seeds import int_words, seed_sequence_states

__all__ = ["pcg64_seeded_states", "trip_draws"]

_MASK128 = (1 << 128) - 1
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG_DEFAULT_MULTIPLIER_128
_WORD = 1 << 32


def pcg64_seeded_states(head: list[int], columns: list[np.ndarray]) -> list[tuple[int, int]]:
    """``(state, inc)`` of ``PCG64(SeedSequence([*head, *column values]))`` for each cohort member.

    ``head`` are entropy integers shared by every member (any size >= 0); ``columns`` are per-member
    integers, each array in ``[0, 2**32)`` (one entropy word each).
    """
    words = [w for n in head for w in int_words(int(n))]
    count = len(columns[0]) if columns else 1
    entropy = np.empty((len(words) + len(columns), count), dtype=np.uint32)
    entropy[: len(words)] = np.array(words, dtype=np.uint32)[:, None]
    for i, col in enumerate(columns):
        entropy[len(words) + i] = col
    # generate_state(4, uint64) is 8 uint32 words read as 4 little-endian uint64: u[j] = w[2j] | w[2j+1] << 32
    w = seed_sequence_states(entropy, 8).astype(np.uint64)
    u = [(w[2 * j] | (w[2 * j + 1] << np.uint64(32))).tolist() for j in range(4)]
    return [_seeded(s_hi, s_lo, i_hi, i_lo) for s_hi, s_lo, i_hi, i_lo in zip(*u, strict=True)]


def _seeded(s_hi: int, s_lo: int, i_hi: int, i_lo: int) -> tuple[int, int]:
    """``pcg64_set_seed(seed = [s_hi, s_lo], inc = [i_hi, i_lo])`` -> ``(state, inc)``."""
    initstate, initseq = (s_hi << 64) | s_lo, (i_hi << 64) | i_lo
    inc = ((initseq << 1) | 1) & _MASK128
    state = inc  # 0 * MULT + inc
    state = (state + initstate) & _MASK128
    return (state * _PCG_MULT + inc) & _MASK128, inc


def trip_draws(
    seed: int, tag: int, clients: np.ndarray, attempts: np.ndarray, jitter_sigma: float
) -> tuple[list[float], list[float], list[float]]:
    """``(jitter, u_drop, u_where)`` per member: for member ``j``, with ``rng =
    np.random.default_rng([seed, tag, clients[j], attempts[j]])``, ``float(rng.lognormal(0.0,
    jitter_sigma))``, ``rng.random()``, ``rng.random()``.

    Raises
    ------
    ValueError
        If a client or attempt is outside ``[0, 2**32)`` (the scalar path handles those).
    """
    clients, attempts = np.asarray(clients, dtype=np.int64), np.asarray(attempts, dtype=np.int64)
    for name, arr in (("clients", clients), ("attempts", attempts)):
        if arr.ndim != 1 or (len(arr) and (int(arr.min()) < 0 or int(arr.max()) >= _WORD)):
            raise ValueError(f"trip_draws: {name} must be a 1-D array of integers in [0, 2**32)")
    if seed < 0 or tag < 0:
        raise ValueError(f"trip_draws: seed and tag must be >= 0, got {seed}, {tag}")
    if not len(clients):
        return [], [], []
    bits = np.random.PCG64(0)
    gen = np.random.Generator(bits)
    jitter, u_drop, u_where = [], [], []
    for state, inc in pcg64_seeded_states([seed, tag], [clients, attempts]):
        bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": inc},
            "has_uint32": 0,
            "uinteger": 0,
        }
        jitter.append(float(gen.lognormal(0.0, jitter_sigma)))
        u_drop.append(gen.random())
        u_where.append(gen.random())
    return jitter, u_drop, u_where
