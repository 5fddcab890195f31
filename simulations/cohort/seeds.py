"""Every client's round seed at once: :func:`stamen.client.core.client_seed` vectorised over ids.

``client_seed(seed, round, pid)`` builds ``np.random.SeedSequence([seed, round, pid])`` and folds
its first two 32-bit state words into a 63-bit integer. One ``SeedSequence`` costs about 10 us, which
alone would cap a cohort at about 100,000 clients per second; this module runs numpy's algorithm
(O'Neill's seed_seq hash, as implemented in ``numpy/random/bit_generator.pyx``: ``mix_entropy`` over
a 4-word pool, then ``generate_state``) on ``uint32`` arrays, one column per client. A test holds it
equal to ``client_seed`` for random seeds, rounds and ids.
"""

from __future__ import annotations

import numpy as np

_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_MASK32 = 0xFFFFFFFF
_XSHIFT = 16


def int_words(n: int) -> list[int]:
    """numpy's ``_int_to_uint32_array``: little-endian 32-bit words, ``[0]`` for zero."""
    if n < 0:
        raise ValueError(f"seed words must be >= 0, got {n}")
    out = [0] if n == 0 else []
    while n > 0:
        out.append(n & _MASK32)
        n >>= 32
    return out


class _Hash:
    """``hashmix`` with its running multiplier (the same for every column: it never sees data)."""

    def __init__(self) -> None:
        self.const = _INIT_A

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(self.const)
        self.const = (self.const * _MULT_A) & _MASK32
        value = value * np.uint32(self.const)
        return value ^ (value >> np.uint32(_XSHIFT))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result: np.ndarray = x * np.uint32(_MIX_L) - y * np.uint32(_MIX_R)
    return result ^ (result >> np.uint32(_XSHIFT))


def _mix_entropy(entropy: np.ndarray) -> np.ndarray:
    """The 4-word pool of each column of ``entropy`` (``uint32``, shape ``(L, c)``)."""
    hashmix = _Hash()
    zero = np.zeros(entropy.shape[1], dtype=np.uint32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
    return np.stack(pool)  # (4, c)


def _generate_state(pool: np.ndarray, n_words: int) -> np.ndarray:
    """``SeedSequence.generate_state(n_words, np.uint32)`` per column, shape ``(n_words, c)``."""
    const = _INIT_B
    out = []
    for i in range(n_words):
        value = pool[i % _POOL] ^ np.uint32(const)
        const = (const * _MULT_B) & _MASK32
        value = value * np.uint32(const)
        out.append(value ^ (value >> np.uint32(_XSHIFT)))
    return np.stack(out)


def seed_sequence_states(entropy: np.ndarray, n_words: int) -> np.ndarray:
    """``SeedSequence(list(entropy[:, j])).generate_state(n_words, np.uint32)`` for every column ``j``
    of ``entropy`` (``uint32``, shape ``(L, c)``, each column one word per entropy integer < 2**32),
    shape ``(n_words, c)``."""
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps by design
        return _generate_state(_mix_entropy(np.asarray(entropy, dtype=np.uint32)), n_words)


def client_seeds(seed: int, server_round: int, partition_ids: np.ndarray) -> np.ndarray:
    """``[client_seed(seed, server_round, pid) for pid in partition_ids]`` as one array.

    Parameters
    ----------
    seed, server_round : int
        Run seed and round number, ``>= 0``.
    partition_ids : np.ndarray
        Integer client ids in ``[0, 2**32)``, shape ``(c,)``.

    Returns
    -------
    np.ndarray
        ``int64`` seeds in ``[0, 2**63)``, shape ``(c,)``.
    """
    pids = np.asarray(partition_ids)
    if pids.ndim != 1 or (len(pids) and (int(pids.min()) < 0 or int(pids.max()) > _MASK32)):
        raise ValueError("partition_ids must be a 1-D array of integers in [0, 2**32)")
    head = int_words(seed) + int_words(server_round)
    entropy = np.empty((len(head) + 1, len(pids)), dtype=np.uint32)  # (L, c)
    entropy[: len(head)] = np.array(head, dtype=np.uint32)[:, None]
    entropy[len(head)] = pids.astype(np.uint32)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps by design
        state = _generate_state(_mix_entropy(entropy), 2).astype(np.uint64)
    return ((state[0] << np.uint64(31)) ^ state[1]).astype(np.int64)
