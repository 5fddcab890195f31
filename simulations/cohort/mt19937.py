"""``torch.randperm`` of many seeded CPU generators at once, bit for bit, on any device.

The per-client trainer (:func:`stamen.client.trainers.full.run_epochs`) draws each epoch's batch
order with ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``. On the CPU, torch
seeds a 32-bit Mersenne Twister (Matsumoto and Nishimura, "Mersenne Twister: a 623-dimensionally
equidistributed uniform pseudo-random number generator", ACM TOMACS 1998) with ``seed & 0xffffffff``
(``init_genrand``) and, for ``n < 2**32 / 20``, shuffles ``0..n-1`` with the forward Fisher-Yates
swap ``z = random() % (n - i); swap(r[i], r[i + z])`` for ``i = 0..n-2`` -- ``n - 1`` draws per call,
later epochs continuing the same stream. This module runs that generator and that shuffle for a
whole cohort as vectorised tensor operations (one column per client), so the cohort trainer draws
exactly the orders the per-client loop draws. A test holds the two equal against ``torch.randperm``.

The state words are kept in ``int64`` with explicit 32-bit masks: every intermediate product stays
below ``2**63`` (``1812433253 < 2**31`` times a 32-bit word), and torch's ``uint32`` has no
arithmetic on every device. The functions take numpy arrays or torch tensors and return the same
kind: numpy on the CPU (its per-operation overhead is a few times lower for these many small
operations, measured), torch on a GPU, where the whole cohort's state lives on the device.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

_N, _M = 624, 397
_MASK32 = 0xFFFFFFFF
_UPPER, _LOWER = 0x80000000, 0x7FFFFFFF
_MATRIX_A = 0x9908B0DF
_INIT_MULT = 1812433253
_BLOCKS = ((0, _N - _M), (_N - _M, 2 * (_N - _M)), (2 * (_N - _M), _N - 1))


def _empty(like: Array, shape: tuple[int, ...]) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.empty(shape, dtype=torch.int64, device=like.device)
    return np.empty(shape, dtype=np.int64)


def _copy(a: Array) -> Array:
    return a.clone() if isinstance(a, torch.Tensor) else a.copy()


def _cat(parts: list[Array]) -> Array:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _at_least(a: Array, low: int) -> Array:
    return a.clamp_min(low) if isinstance(a, torch.Tensor) else np.maximum(a, low)


def _arange(like: Array, n: int) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.arange(n, device=like.device)
    return np.arange(n, dtype=np.int64)


def init_states(seeds: Array) -> Array:
    """MT19937 ``init_genrand`` state of every seed, word-major.

    Parameters
    ----------
    seeds : np.ndarray or torch.Tensor
        ``int64``, shape ``(c,)``; only the low 32 bits are used (as torch's CPU generator does).

    Returns
    -------
    np.ndarray or torch.Tensor
        ``int64`` words in ``[0, 2**32)``, shape ``(624, c)`` (row ``j`` is word ``j`` of every
        client: contiguous rows keep the 623 sequential steps cheap), the seeds' kind and device.
    """
    state = _empty(seeds, (_N, seeds.shape[0]))  # (624, c)
    prev = seeds & _MASK32
    state[0] = prev
    for j in range(1, _N):
        prev = (_INIT_MULT * (prev ^ (prev >> 30)) + j) & _MASK32
        state[j] = prev
    return state


def _twist(y: Array, far: Array) -> Array:
    """``far ^ (y >> 1) ^ (MATRIX_A if y odd)`` for the combined words ``y``."""
    return far ^ (y >> 1) ^ ((y & 1) * _MATRIX_A)


def next_state(state: Array, words: int = _N) -> None:
    """Regenerate the first ``words`` of the 624 words in place (the reference loop in hazard-free
    blocks); the rest keep their old values, so only call with ``words < 624`` for the last block.

    Word ``k`` reads word ``k + 1`` (not yet regenerated, except for the last word, which reads the
    new word 0) and word ``k + 397 mod 624`` (old for ``k < 227``, new afterwards); the blocks
    ``[0, 227)``, ``[227, 454)``, ``[454, 623)`` and ``623`` each read only finished words.
    """
    old = _copy(state if words > _N - _M else state[: _N - _M + 1])
    for lo, hi in _BLOCKS:
        if lo >= words:
            return
        hi = min(hi, words)
        y = (old[lo:hi] & _UPPER) | (old[lo + 1 : hi + 1] & _LOWER)
        far = state[lo + _M : hi + _M] if lo == 0 else state[lo + _M - _N : hi + _M - _N]
        state[lo:hi] = _twist(y, far)
    if words == _N:
        y = (old[_N - 1] & _UPPER) | (state[0] & _LOWER)
        state[_N - 1] = _twist(y, state[_M - 1])


def _temper(y: Array) -> Array:
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & 0x9D2C5680)
    y = y ^ ((y << 15) & 0xEFC60000)
    return y ^ (y >> 18)


def draws(seeds: Array, count: int) -> Array:
    """The first ``count`` 32-bit outputs of each seed's generator (``torch.Generator.random()``).

    Returns
    -------
    np.ndarray or torch.Tensor
        ``int64`` in ``[0, 2**32)``, shape ``(count, c)`` (draw-major).
    """
    state = init_states(seeds)
    blocks = []
    for start in range(0, count, _N):
        words = min(_N, count - start)
        next_state(state, words)
        blocks.append(_temper(state[:words]))
    return _cat(blocks) if blocks else _empty(seeds, (0, seeds.shape[0]))


def randperms(seeds: Array, sizes: Array, epochs: int) -> Array:
    """Each client's ``epochs`` successive ``torch.randperm(n, generator=...)`` orders.

    Parameters
    ----------
    seeds : np.ndarray or torch.Tensor
        ``int64`` generator seeds, shape ``(c,)``.
    sizes : np.ndarray or torch.Tensor
        ``int64`` permutation lengths ``n >= 1``, shape ``(c,)``, same kind and device.
    epochs : int
        Successive permutations drawn from each generator, ``>= 1``.

    Returns
    -------
    np.ndarray or torch.Tensor
        ``int64``, shape ``(epochs, max(sizes), c)``: ``[e, :n_k, k]`` is client ``k``'s
        permutation in epoch ``e``; entries past ``n_k`` are meaningless.
    """
    c, width = seeds.shape[0], int(sizes.max()) if len(sizes) else 0
    stream = draws(seeds, epochs * max(width - 1, 0))  # (E * (width - 1), c)
    cols, last = _arange(seeds, c), sizes - 1
    out = _empty(seeds, (epochs, width, c))
    for e in range(epochs):
        perm = out[e]  # (width, c), a view: swapped in place
        perm[:] = _arange(seeds, width)[:, None]
        for i in range(width - 1):
            z = stream[_at_least(e * last + i, 0), cols] % _at_least(last + 1 - i, 1)
            j = i + (z * (i < last))  # rows past a client's own n - 1 swap with themselves
            held = _copy(perm[i])
            perm[i] = perm[j, cols]
            perm[j, cols] = held
    return out


def randperms_loop(seeds: np.ndarray, sizes: np.ndarray, epochs: int) -> np.ndarray:
    """:func:`randperms` on the CPU by calling ``torch.randperm`` itself, one generator per client.

    Same result and layout (``(epochs, max(sizes), c)``, padding 0); on the CPU this loop is 2-5x
    faster than the vectorised generator at cohorts of 100-1,000 (a few microseconds per call in C
    against ~2,000 small array operations per cohort), which stays for the GPU.
    """
    c, width = len(seeds), int(np.max(sizes)) if len(sizes) else 0
    out = np.zeros((epochs, width, c), dtype=np.int64)
    gen = torch.Generator()
    for k, (seed, n) in enumerate(zip(np.asarray(seeds).tolist(), np.asarray(sizes).tolist(), strict=True)):
        gen.manual_seed(seed)
        for e in range(epochs):
            out[e, :n, k] = torch.randperm(n, generator=gen).numpy()
    return out
