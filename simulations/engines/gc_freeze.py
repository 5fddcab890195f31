"""The run's long-lived objects kept out of Python's cyclic garbage collector while it runs.

A simulation process holds a few hundred thousand objects that live as long as it does: the
modules of torch, numpy, scipy and Flower, the loaded data and the model (about 214,000 after the
imports of the engine benchmark's scenario). Each full (generation 2) collection walks all of them:
66-79 ms here, about once every 10 rounds of 100 clients. With worker processes a round waits for
the slowest process, so every process's collections stall it (two of 20 rounds took 190 ms
instead of 78). ``gc.freeze()`` moves the objects alive at the start of the run into the
collector's permanent generation, which collections skip; a forked worker inherits that (and no
collection writes to the parent's pages it shares, as the ``gc`` documentation recommends for
processes that ``fork``). Objects made during the run are collected as usual; reference counting
still frees a frozen object that becomes unreachable, so what is kept is at most garbage cycles
that existed at the start, which ``gc.unfreeze()`` at the end returns to the collector.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Freeze the objects alive now for the duration of the block, then unfreeze them. In a process
    that has already frozen objects of its own (a pre-fork server), nothing is frozen: ``gc.unfreeze``
    would release the caller's too, and a freeze never undone would keep every run's garbage cycles
    for good."""
    if gc.get_freeze_count() > 0:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
