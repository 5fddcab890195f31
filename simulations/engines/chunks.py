"""The per-client loop in bounded chunks: clients trained back to back, then released, trips drawn and
replies verified a chunk at once.

Handing the round driver one client's reply at a time interleaves the timing model, the codec and
the envelope checks with torch's training, each finding its code cold in the CPU caches: a trip
drawn right after a client's training took ~73 us against ~19 us in a loop (ad hoc), ~0.17 ms a
client with the meter's bookkeeping, 11 % of a 100-client round of the engine benchmark's MLP. In
chunks, a chunk's trips are drawn at once (:meth:`~stamen.simulations.timing.ClientTiming.trips`,
the same trips bit for bit) and its replies verified one after the other; where a round's clients
can be trained apart (:func:`~stamen.simulations.engines.paths.serial_reason`), the chunk's clients
are trained into rows first, then released (:mod:`~stamen.simulations.engines.rows`, the same
envelopes byte for byte). A 3-round run went from 0.47 to 0.41 s (BENCHMARKS §1, beside the
one-at-a-time loop in the same runs).

A chunk is bounded in clients, in bytes (a large model's replies or rows are not held many at a
time: MiniLM's, 86 MB each, go one by one) and in time (progress stays responsive with slow clients).
Rows are used only up to :data:`MAX_ROW_BYTES` a client: a larger model's training dwarfs what
locality saves, and writing its whole delta into a row costs a copy the client round does not make
(LoRA on MiniLM: its 22.7M parameters' row, ~90 MB a client, mostly the frozen tensors' zeros;
the copy took ~35 ms for a 29M-parameter layout, ad hoc).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from stamen.server.driver.types import Reply

MAX_COUNT = 256
MAX_BYTES = 32 * 2**20
MAX_SECONDS = 0.5
FIRST_SLICE = 4  # clients in a round's first slice, timed to size the next ones
MAX_ROW_BYTES = 4 * 2**20  # the largest row (float32 delta of one client) the loop trains into


def _check(max_count: int, max_bytes: int, max_seconds: float) -> None:
    if max_count < 1 or max_bytes < 1 or not max_seconds > 0:
        bounds = f"{max_count}, {max_bytes}, {max_seconds}"
        raise ValueError(f"chunk bounds must be positive, got {bounds}")


def reply_chunks(
    replies: Iterable[Reply],
    *,
    max_count: int = MAX_COUNT,
    max_bytes: int = MAX_BYTES,
    max_seconds: float = MAX_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[list[Reply]]:
    """``replies`` (made lazily, in order) as consecutive non-empty lists: each closed once it holds
    ``max_count`` replies or ``max_bytes`` envelope bytes, or once its replies took ``max_seconds`` to
    make (from the previous chunk's end); the last holds the rest. Order and contents are unchanged,
    whatever the bounds."""
    _check(max_count, max_bytes, max_seconds)
    chunk: list[Reply] = []
    held, began = 0, clock()
    for reply in replies:
        chunk.append(reply)
        held += reply.nbytes
        if len(chunk) >= max_count or held >= max_bytes or clock() - began >= max_seconds:
            yield chunk
            chunk, held, began = [], 0, clock()
    if chunk:
        yield chunk


def task_slices(
    n: int,
    row_bytes: int,
    *,
    max_count: int = MAX_COUNT,
    max_bytes: int = MAX_BYTES,
    max_seconds: float = MAX_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``: at most ``max_count`` items and ``max_bytes`` of rows
    of ``row_bytes`` each (at least one item), and sized from the previous slice's time a client (the
    caller's work on it, until it asks for the next) to take about ``max_seconds``; the first holds
    :data:`FIRST_SLICE`."""
    _check(max_count, max_bytes, max_seconds)
    cap = max(1, min(max_count, max_bytes // max(row_bytes, 1)))
    lo, size = 0, min(cap, FIRST_SLICE)
    while lo < n:
        hi, began = min(n, lo + size), clock()
        yield slice(lo, hi)
        per = (clock() - began) / (hi - lo)
        size = cap if per <= 0 else max(1, min(cap, int(max_seconds / per)))
        lo = hi
