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
arithmetic on every device.
"""

from __future__ import annotations

import torch

_N, _M = 624, 397
_MASK32 = 0xFFFFFFFF
_UPPER, _LOWER = 0x80000000, 0x7FFFFFFF
_MATRIX_A = 0x9908B0DF
_INIT_MULT = 1812433253


def init_states(seeds: torch.Tensor) -> torch.Tensor:
    """MT19937 ``init_genrand`` state of every seed, word-major.

    Parameters
    ----------
    seeds : torch.Tensor
        ``int64``, shape ``(c,)``; only the low 32 bits are used (as torch's CPU generator does).

    Returns
    -------
    torch.Tensor
        ``int64`` words in ``[0, 2**32)``, shape ``(624, c)`` (row ``j`` is word ``j`` of every
        client: contiguous rows keep the 623 sequential steps cheap), on the seeds' device.
    """
    state = torch.empty((_N, seeds.shape[0]), dtype=torch.int64, device=seeds.device)  # (624, c)
    torch.bitwise_and(seeds, _MASK32, out=state[0])
    for j in range(1, _N):
        prev = state[j - 1]
        row = state[j]
        torch.bitwise_right_shift(prev, 30, out=row)
        row.bitwise_xor_(prev).mul_(_INIT_MULT).add_(j).bitwise_and_(_MASK32)
    return state


def _twist(y: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """``far ^ (y >> 1) ^ (MATRIX_A if y odd)`` for the combined words ``y``."""
    return far ^ (y >> 1) ^ ((y & 1) * _MATRIX_A)


_BLOCKS = ((0, _N - _M), (_N - _M, 2 * (_N - _M)), (2 * (_N - _M), _N - 1))


def next_state(state: torch.Tensor, words: int = _N) -> None:
    """Regenerate the first ``words`` of the 624 words in place (the reference loop in hazard-free
    blocks); the rest keep their old values, so only call with ``words < 624`` for the last block.

    Word ``k`` reads word ``k + 1`` (not yet regenerated, except for the last word, which reads the
    new word 0) and word ``k + 397 mod 624`` (old for ``k < 227``, new afterwards); the blocks
    ``[0, 227)``, ``[227, 454)``, ``[454, 623)`` and ``623`` each read only finished words.
    """
    old = state.clone() if words > _N - _M else state[: _N - _M + 1].clone()
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


def _temper(y: torch.Tensor) -> torch.Tensor:
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & 0x9D2C5680)
    y = y ^ ((y << 15) & 0xEFC60000)
    return y ^ (y >> 18)


def draws(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` 32-bit outputs of each seed's generator (``torch.Generator.random()``).

    Returns
    -------
    torch.Tensor
        ``int64`` in ``[0, 2**32)``, shape ``(count, c)`` (draw-major).
    """
    state = init_states(seeds)
    blocks = []
    for start in range(0, count, _N):
        words = min(_N, count - start)
        next_state(state, words)
        blocks.append(_temper(state[:words]))
    if not blocks:
        return torch.empty((0, seeds.shape[0]), dtype=torch.int64, device=seeds.device)
    return torch.cat(blocks, dim=0)


def randperms(seeds: torch.Tensor, sizes: torch.Tensor, epochs: int) -> torch.Tensor:
    """Each client's ``epochs`` successive ``torch.randperm(n, generator=...)`` orders.

    Parameters
    ----------
    seeds : torch.Tensor
        ``int64`` generator seeds, shape ``(c,)``.
    sizes : torch.Tensor
        ``int64`` permutation lengths ``n >= 1``, shape ``(c,)``, same device.
    epochs : int
        Successive permutations drawn from each generator, ``>= 1``.

    Returns
    -------
    torch.Tensor
        ``int64``, shape ``(epochs, max(sizes), c)``: ``[e, :n_k, k]`` is client ``k``'s
        permutation in epoch ``e``; entries past ``n_k`` are ``n_k ... max-1`` and meaningless.
    """
    c, width = seeds.shape[0], int(sizes.max()) if len(sizes) else 0
    stream = draws(seeds, epochs * max(width - 1, 0))  # (E * (width - 1), c)
    out = torch.arange(width, device=seeds.device).repeat(epochs, c, 1).transpose(1, 2).contiguous()
    last = (sizes - 1).unsqueeze(0)  # (1, c)
    for e in range(epochs):
        perm = out[e]  # (width, c), a view: swapped in place
        for i in range(width - 1):
            # gather/scatter along dim 0: far cheaper on CPU than indexing with (row, col) tensors
            z = stream.gather(0, (e * last + i).clamp_min(0)) % (last + 1 - i).clamp_min(1)
            j = i + torch.where(i < last, z, 0)  # (1, c); rows past a client's n - 1 stay put
            held = perm[i : i + 1].clone()
            perm[i : i + 1] = perm.gather(0, j)
            perm.scatter_(0, j, held)
    return out
