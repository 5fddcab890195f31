"""Shared numerics of the robust rules: parameter checks, centred Gram matrix, sorted column blocks.

Why a centred, blocked Gram matrix: Krum, Bulyan, NNM, the geometric median and centered clipping
only need the ``(n, n)`` inner products of the rows. ``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` loses
every digit when the rows share a large common component (measured: 89 % relative error on rows
``5 + 0.01 N(0, 1)`` in float32), so the rows are centred on their mean first (distances do not
change) and the products of float32 column blocks are accumulated in float64 (relative error
~1e-7). Blocks of 32768 columns stay in cache: on the 2-core dev box this takes 0.07 s for
``(50, 10^6)`` against 0.21 s for one float32 ``X @ X.T``.

Why sorting instead of ``np.partition`` for the coordinate-wise rules: numpy >= 2 sorts float32
with SIMD networks (x86-simd-sort / highway), while ``np.partition`` is a scalar introselect.
Measured on ``(50, 10^6)`` float32: partition along the client axis 0.55-0.63 s, sort of
transposed ``(4096, 50)`` blocks 0.08 s, for the same median. Blocks are transposed so that each
coordinate's ``n`` values are contiguous.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np

GRAM_BLOCK = 32768  # columns per block of the centred Gram product
SORT_BLOCK = 4096  # coordinates per transposed block of the coordinate-wise rules


def as_stack(updates: np.ndarray) -> np.ndarray:
    """The ``(n, d)`` stack as float32 (no copy when it already is)."""
    return np.asarray(updates, dtype=np.float32)


def check_count(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum``; ``ValueError`` naming ``name`` otherwise (bools refused)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {out}")
    return out


def check_positive(name: str, value: object) -> float:
    """``value`` as a finite float ``> 0``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    out = float(value)
    if not np.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return out


def centered_gram(x: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """Float64 Gram matrix of the rows of ``[x; extra]``, all centred on the mean row of ``x``.

    Parameters
    ----------
    x : ndarray, shape (n, d), float32
    extra : ndarray, shape (k, d), optional
        More rows (e.g. a clipping centre) expressed in the same centred frame.

    Returns
    -------
    ndarray, shape (n + k, n + k), float64
    """
    n, d = x.shape
    more = np.zeros((0, d), np.float32) if extra is None else np.asarray(extra, np.float32)
    k = more.shape[0]
    share = np.full(n, 1.0 / n, dtype=np.float32)
    gram = np.zeros((n + k, n + k), dtype=np.float64)
    for start in range(0, d, GRAM_BLOCK):  # blocks of columns, not single coordinates
        cols = slice(start, start + GRAM_BLOCK)
        mean = share @ x[:, cols]  # (B,): the block's own columns, read once while in cache
        block = x[:, cols] - mean  # (n, B)
        gram[:n, :n] += block @ block.T
        if k:  # no concatenation: the (n, d) stack is never copied
            other = more[:, cols] - mean  # (k, B)
            cross = block @ other.T  # (n, k)
            gram[:n, n:] += cross
            gram[n:, :n] += cross.T
            gram[n:, n:] += other @ other.T
    return gram


def sq_distances(gram: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``G_ii + G_jj - 2 G_ij`` (clipped at 0; exact 0 diagonal)."""
    sq = np.diag(gram)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def pairwise_sq_distances(x: np.ndarray) -> np.ndarray:
    """``(n, n)`` float64 squared distances between the rows of the float32 stack ``x``."""
    return sq_distances(centered_gram(x))


def sorted_column_blocks(x: np.ndarray, rows: np.ndarray | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(columns, block)``, ``block`` of shape ``(B, k)``: each coordinate's values sorted.

    ``rows`` (distinct indices, ``k = len(rows)``) restricts the stack to those rows without a
    fancy-index gather: the whole column block is transposed, the other rows are overwritten with
    NaN, which numpy sorts last, and the first ``k`` sorted values are yielded (a view). These equal
    the sorted values of ``rows`` alone, NaNs of ``rows`` included (the gather cost more than the
    sort of the extra values, which pad into the same SIMD network).
    """
    n, d = x.shape
    excluded = None if rows is None else np.setdiff1d(np.arange(n), rows)
    k = n if excluded is None else n - excluded.size
    for start in range(0, d, SORT_BLOCK):
        cols = slice(start, min(start + SORT_BLOCK, d))
        block = np.ascontiguousarray(x[:, cols].T)  # (B, n): one coordinate per row
        if excluded is not None and excluded.size:
            block[:, excluded] = np.nan
        block.sort(axis=1)
        yield cols, block[:, :k]
