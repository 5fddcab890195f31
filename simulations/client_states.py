"""The virtual clients' memory across rounds, bounded in RAM: kept only for clients that have some,
least recently used spilled to disk past a byte bound.

A client's :class:`~stamen.client.state.ClientState` (error-feedback residuals: one float32 copy of
the model per client under top-k or FedZip with error feedback; DP-SGD step counts) lives as long as
the run. With 100,000 clients of a 3,338-parameter MLP, residuals alone are 1.3 GB; for a larger
model they exceed any machine's memory. :class:`ClientStates` is the in-process engine's mapping
``partition id -> ClientState``:

- a state that is still empty at the end of a round is dropped (most clients never have any);
- :meth:`ClientStates.settle`, called by the engine after each round, writes the least recently used
  states to ``<dir>/<pid>.npz`` (uncompressed numpy archives, no pickle) until the states in memory
  hold at most ``memory_bytes``; a spilled state is read back, and its file removed, the next time
  the client is sampled. Between two ``settle`` calls nothing is spilled, so a state handed out
  for a round is never written while the client code still mutates it (memory may exceed the bound
  by one cohort's states during a round).

The spill directory is a fresh temporary directory unless one is given; :meth:`close` removes it.
Checkpoints read every state, in memory or spilled (:func:`peek` does not load into memory).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import numpy as np

from stamen.client.state import ClientState

ENTRY_OVERHEAD = 256
"""Bytes counted per state in memory beyond its arrays (the objects, the scalars)."""


def state_bytes(state: ClientState) -> int:
    """What ``state`` is counted as in memory: its arrays' bytes plus :data:`ENTRY_OVERHEAD`."""
    return ENTRY_OVERHEAD + sum(int(a.nbytes) for a in state.arrays.values())


def save_state(path: Path, state: ClientState) -> None:
    """``state`` as an ``.npz``: arrays under ``a/<name>``, scalars as float64 under ``s/<name>``."""
    entries = {f"a/{k}": np.asarray(v) for k, v in state.arrays.items()}
    entries.update({f"s/{k}": np.asarray(v, dtype=np.float64) for k, v in state.scalars.items()})
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, **entries)  # type: ignore[arg-type]
    tmp.replace(path)


def load_state(path: Path) -> ClientState:
    """The :class:`ClientState` :func:`save_state` wrote."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k[2:]: z[k] for k in z.files if k.startswith("a/")}
        scalars = {k[2:]: float(z[k]) for k in z.files if k.startswith("s/")}
    return ClientState(arrays, scalars)


class ClientStates(MutableMapping[int, ClientState]):
    """``partition id -> ClientState`` with at most ``memory_bytes`` in memory after :meth:`settle`.

    Parameters
    ----------
    memory_bytes : int
        Bound on the states kept in memory after each :meth:`settle` (``>= 0``; 0 spills all).
    spill_dir : str or Path, optional
        Where spilled states go; a temporary directory (created on the first spill) by default.
    """

    def __init__(self, memory_bytes: int = 1 << 30, spill_dir: str | Path | None = None) -> None:
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.memory_bytes = memory_bytes
        self._hot: OrderedDict[int, ClientState] = OrderedDict()  # least recently used first
        self._cold: set[int] = set()
        self._sizes: dict[int, int] = {}  # state_bytes of each state in memory, as of the last settle
        self._touched: set[int] = set()  # handed out since the last settle (may have changed)
        self._held = 0  # sum of _sizes
        self._dir = Path(spill_dir) if spill_dir is not None else None
        self._own_dir = spill_dir is None
        self._made = False  # the spill directory exists (made once, on first use)
        self.spilled = 0  # states written to disk so far (a counter for the run summary)

    def _path(self, pid: int) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="stamen-client-states-"))
        elif not self._made:
            self._dir.mkdir(parents=True, exist_ok=True)
        self._made = True
        return self._dir / f"{int(pid)}.npz"

    def __getitem__(self, pid: int) -> ClientState:
        if pid in self._hot:
            self._hot.move_to_end(pid)
            self._touched.add(pid)
            return self._hot[pid]
        if pid not in self._cold:
            raise KeyError(pid)
        path = self._path(pid)
        state = load_state(path)
        self._cold.discard(pid)
        path.unlink()
        self._hot[pid] = state
        self._touched.add(pid)
        return state

    def __setitem__(self, pid: int, state: ClientState) -> None:
        if pid in self._cold:
            self._cold.discard(pid)
            self._path(pid).unlink(missing_ok=True)
        self._hot[pid] = state
        self._hot.move_to_end(pid)
        self._touched.add(pid)

    def __delitem__(self, pid: int) -> None:
        if pid in self._hot:
            self._forget(pid)
        elif pid in self._cold:
            self._cold.discard(pid)
            self._path(pid).unlink(missing_ok=True)
        else:
            raise KeyError(pid)

    def __iter__(self) -> Iterator[int]:
        yield from list(self._hot)
        yield from sorted(self._cold)

    def __len__(self) -> int:
        return len(self._hot) + len(self._cold)

    def __contains__(self, pid: object) -> bool:
        return pid in self._hot or pid in self._cold  # without loading a spilled state

    def peek(self, pid: int) -> ClientState:
        """Client ``pid``'s state without bringing a spilled one into memory (for checkpoints)."""
        if pid in self._hot:
            return self._hot[pid]
        if pid in self._cold:
            return load_state(self._path(pid))
        raise KeyError(pid)

    def in_memory(self) -> tuple[int, int]:
        """``(states, bytes)`` held in memory now."""
        return len(self._hot), sum(state_bytes(s) for s in self._hot.values())

    def _forget(self, pid: int) -> None:
        del self._hot[pid]
        self._held -= self._sizes.pop(pid, 0)
        self._touched.discard(pid)

    def settle(self) -> None:
        """Drop empty states, then spill the least recently used until memory is within the bound.

        Costs O(states handed out since the last call + states spilled), not O(states held)."""
        for pid in [p for p in self._touched if p in self._hot]:
            state = self._hot[pid]
            if not state.arrays and not state.scalars:
                self._forget(pid)
                continue
            size = state_bytes(state)
            self._held += size - self._sizes.get(pid, 0)
            self._sizes[pid] = size
        self._touched.clear()
        while self._hot and self._held > self.memory_bytes:
            pid, state = next(iter(self._hot.items()))
            self._forget(pid)
            save_state(self._path(pid), state)
            self._cold.add(pid)
            self.spilled += 1

    def clear(self) -> None:
        """Forget every state, spilled ones included (their files are removed)."""
        for pid in self._cold:
            self._path(pid).unlink(missing_ok=True)
        self._hot.clear()
        self._cold.clear()
        self._sizes.clear()
        self._touched.clear()
        self._held = 0

    def close(self) -> None:
        """Forget every state and remove the temporary spill directory (idempotent)."""
        self.clear()
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir, self._made = None, False
