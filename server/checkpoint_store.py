"""Content-addressed part files of a checkpoint: every large array written once.

A checkpoint (:mod:`stamen.server.checkpoint`, format version 2) keeps its small arrays inline and
stores each unit of at least :data:`PART_MIN_BYTES` as a part: a unit is a model (the weights, one
version of the model history, an edge device's version: every tensor of it in one file) or any
other single array (a reply's envelope, a buffered row, the momentum). A part is named by the
SHA-256 of its tensors' names, dtypes, shapes and bytes and lives in
``<state-dir>/parts/<sha256>.safetensors``, so the same model held twice (the weights and the
history's newest version) is one file. A part already on disk is not written again, so an
asynchronous run that checkpoints after every reply writes only what changed since the last
checkpoint: the new model version, the new reply's envelope, a changed buffer row or client
memory. The model history, the in-flight envelopes and the unchanged rows of the open buffer are
referenced, not rewritten.

Crash safety, in the order :func:`~stamen.server.checkpoint.write_checkpoint` follows:

1. each new part: temporary file in ``parts/`` (created, and the state-dir fsync'd, the first
   time), written, fsync'd, renamed to its name;
2. ``parts/`` fsync'd, so every part the new manifest names is durable;
3. the manifest (``checkpoint.safetensors``) written the same way and renamed over the old one;
4. only then :meth:`PartStore.collect` deletes the parts the committed manifest no longer names.

A crash before 3 leaves the old manifest and all of its parts (nothing it names is deleted before
a newer manifest is committed); the new, unreferenced parts are removed when the run resumes
(:meth:`PartStore.collect` with the loaded manifest's names). A part is checked against its name
when read, so a damaged part is one :class:`~stamen.server.checkpoint.CheckpointError` line.

Hashing: an array that cannot change (read-only, owning its memory or viewing ``bytes``: the model
history's versions, reply envelopes) is hashed once and remembered by identity while checkpoints
keep naming it; any other array is hashed on every write (cheap next to writing it).

One run at a time: :func:`lock_state_dir` holds the state-dir for the run (an advisory lock on the
directory), so a second run started on it is refused before it collects the parts the first has
written for a manifest it has not committed yet.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from stamen.server import checkpoint as cpt

log = logging.getLogger("stamen.server")

PARTS_DIR = "parts"
SUFFIX = ".safetensors"
PART_MIN_BYTES = 64 * 2**10  # smaller arrays stay inline in the manifest


Unit = Mapping[str, np.ndarray]
"""The tensors of one part, by their name inside it."""


def content_hash(a: np.ndarray) -> str:
    """SHA-256 over the array's dtype, shape and bytes (C order, little-endian: a part file holds
    them so, and a big-endian array read back must match the name it was written under)."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{a.dtype.str}\0{a.shape}\0".encode())
    h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def unit_hash(hashes: Mapping[str, str]) -> str:
    """A part's name: SHA-256 over its tensors' names and :func:`content_hash` values."""
    return hashlib.sha256("".join(f"{n}\0{hashes[n]}\0" for n in sorted(hashes)).encode()).hexdigest()


def _immutable(a: np.ndarray) -> bool:
    """The array's bytes cannot change (read-only and owning them, or a view of ``bytes``)."""
    if a.flags.writeable:
        return False
    return a.base is None or isinstance(a.base, bytes)


class PartStore:
    """The ``parts/`` folder of a state-dir: write once, read verified, collect unreferenced."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / PARTS_DIR
        self.written = 0  # bytes of part files written (a counter the caller reads and resets)
        self._on_disk: set[str] | None = None
        self._fresh = False  # a part was renamed into place since the last sync
        self._memo: dict[int, tuple[np.ndarray, str]] = {}  # immutable arrays by identity
        self._used: dict[int, tuple[np.ndarray, str]] = {}

    def _known(self) -> set[str]:
        if self._on_disk is None:
            found = self.dir.glob(f"*{SUFFIX}") if self.dir.is_dir() else []
            self._on_disk = {p.name[: -len(SUFFIX)] for p in found}
        return self._on_disk

    def _hash(self, a: np.ndarray) -> str:
        hit = self._memo.get(id(a))
        name = hit[1] if hit is not None and hit[0] is a else content_hash(a)
        if _immutable(a):
            self._used[id(a)] = (a, name)  # holding it keeps its id from being reused
        return name

    def put(self, unit: Unit) -> str | None:
        """The part name of ``unit``, writing its file first unless it is already on disk; None
        (keep it inline) when it has fewer than :data:`PART_MIN_BYTES` bytes."""
        if sum(a.nbytes for a in unit.values()) < PART_MIN_BYTES:
            return None
        name = unit_hash({n: self._hash(a) for n, a in unit.items()})
        if name not in self._known():
            data = bytes(st_save({n: np.ascontiguousarray(a) for n, a in unit.items()}))
            if not self.dir.is_dir():  # its entry durable before a manifest names its files
                self.dir.mkdir(parents=True, exist_ok=True)
                cpt.fsync_dir(self.dir.parent)
            cpt.atomic_write(self.dir, name + SUFFIX, data, sync_dir=False)
            self._known().add(name)
            self.written += len(data)
            self._fresh = True
        return name

    def sync(self) -> None:
        """Make the parts renamed since the last sync durable (before a manifest names them)."""
        if self._fresh:
            cpt.fsync_dir(self.dir)
            self._fresh = False
        self._memo, self._used = self._used, {}

    def split(
        self, arrays: dict[str, np.ndarray], groups: Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]]:
        """Store ``arrays``' large units as parts and take them out of ``arrays``; returns the
        ``parts`` table (key -> [part name, tensor name]). ``groups``: prefix -> tensor names of
        each model among the keys (``prefix + name``); every other array is a unit of its own."""
        table: dict[str, list[str]] = {}
        for unit in _units(arrays, groups):
            name = self.put({n: arrays[k] for k, n in unit.items()})
            if name is not None:
                table.update({k: [name, n] for k, n in unit.items()})
        for key in table:
            del arrays[key]
        return table

    def resolve(self, table: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
        """The tensors a checkpoint's ``parts`` table names, each part read (and checked) once."""
        loaded = {name: self.get(name) for name in {v[0] for v in table.values()}}
        try:
            return {k: loaded[name][n] for k, (name, n) in table.items()}
        except KeyError as exc:
            raise cpt.CheckpointError(f"checkpoint is corrupt: part lacks tensor {exc}") from None

    def get(self, name: object) -> dict[str, np.ndarray]:
        """The tensors of part ``name``, checked against its name."""
        if not cpt.is_part_name(name):
            raise cpt.CheckpointError(f"checkpoint is corrupt: part name {name!r}")
        path = self.dir / f"{name}{SUFFIX}"
        try:
            if path.stat().st_size > cpt.MAX_FILE_BYTES:
                raise cpt.CheckpointError(f"{path} is larger than the {cpt.MAX_FILE_BYTES} bytes allowed")
            arrays = st_load(path.read_bytes())
        except FileNotFoundError:
            raise cpt.CheckpointError(f"checkpoint is incomplete: part {path} is missing") from None
        except (OSError, SafetensorError) as exc:
            raise cpt.CheckpointError(f"{path} cannot be read: {exc}") from None
        if unit_hash({n: content_hash(a) for n, a in arrays.items()}) != name:
            raise cpt.CheckpointError(f"{path} is corrupt: its contents do not match its name")
        return arrays

    def collect(self, keep: set[str]) -> list[Path]:
        """Delete every part (and leftover temporary file) not in ``keep``; returns what went.

        Called only after the manifest naming ``keep`` is committed (or was loaded)."""
        if not self.dir.is_dir():
            return []
        gone = [p for p in self.dir.iterdir() if p.is_file() and p.name[: -len(SUFFIX)] not in keep]
        for p in gone:
            try:
                p.unlink()
            except OSError as exc:  # the next collect tries again; the checkpoint itself is whole
                log.warning("cannot remove unreferenced checkpoint part %s: %s", p, exc)
        self._on_disk = None
        return gone


_HELD: set[int] = set()  # this process's state-dir locks (descriptors), closed in a forked child


def _drop_inherited_locks() -> None:
    """In a forked child (e.g. a simulation's worker process): close the copies of the parent's
    state-dir locks, which would otherwise keep a state-dir locked after the parent ended for as
    long as the child lives (an ``flock`` lasts while any copy of its descriptor is open)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def unlock_state_dir(fd: int) -> None:
    """Let go of a lock :func:`lock_state_dir` returned (nothing in a forked child, which closed its
    copy at the fork: the number may name another file since)."""
    if fd in _HELD:
        _HELD.discard(fd)
        os.close(fd)


def lock_state_dir(state_dir: Path) -> int | None:
    """Hold ``state_dir`` (created) for one run: an exclusive advisory lock on the directory,
    released when the returned descriptor is closed or the process ends. A run already holding it
    is one :class:`~stamen.server.checkpoint.CheckpointError` line; None (a warning, no lock) where
    the file system cannot lock. Release it with :func:`unlock_state_dir`."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir, os.O_RDONLY)
    except OSError as exc:
        raise cpt.CheckpointError(f"state-dir {state_dir} cannot be opened: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise cpt.CheckpointError(
                f"state-dir {state_dir} is in use by another run (a server still running from it?); "
                "stop that run first, or use another state-dir"
            ) from None
        log.warning("cannot lock state-dir %s (%s): nothing stops a second run using it", state_dir, exc)
        return None
    _HELD.add(fd)
    return fd


def _units(arrays: Mapping[str, np.ndarray], groups: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Each unit as key -> tensor name: a group whose keys are all there, else one array (``a``)."""
    units: list[dict[str, str]] = []
    taken: set[str] = set()
    for prefix, names in groups.items():
        unit = {prefix + n: n for n in names}
        if unit and all(k in arrays and k not in taken for k in unit):
            units.append(unit)
            taken.update(unit)
    units += [{k: "a"} for k in arrays if k not in taken]
    return units
