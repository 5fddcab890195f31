"""The per-client loop's replies in bounded chunks: trips drawn and replies verified a chunk at once.

Handing the round driver one reply at a time interleaves the timing model and the envelope checks
with torch's training, each finding its code cold in the CPU caches: a trip drawn right after a
client's training took ~73 us against ~19 us in a loop (measured), ~0.17 ms a client with the
meter's bookkeeping, 11 % of a 100-client round of the engine benchmark's MLP. In chunks, a chunk's
trips are drawn at once (:meth:`~stamen.simulations.timing.ClientTiming.trips`, the same trips bit
for bit) and its replies verified one after the other: that round went from 0.46 to 0.42 s (ad hoc,
3 rounds; BENCHMARKS §1). A chunk is closed at ``max_count`` replies, at ``max_bytes`` of envelopes
(a large model's replies are not held many at a time: MiniLM's, 86 MB each, go one by one) or after
``max_seconds`` of training (progress stays responsive with slow clients), whichever comes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from stamen.server.driver.types import Reply

MAX_COUNT = 256
MAX_BYTES = 32 * 2**20
MAX_SECONDS = 0.5


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
    if max_count < 1 or max_bytes < 1 or not max_seconds > 0:
        bounds = f"{max_count}, {max_bytes}, {max_seconds}"
        raise ValueError(f"reply_chunks: bounds must be positive, got {bounds}")
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
