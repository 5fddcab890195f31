"""Checking a store when it is opened, and repairing one whose current version is corrupt.

Files on a device can rot under the runtime (bit flips on an SD card, a file deleted by hand).
Opening a store recomputes the current version's hash, and the personal overlay's, and compares
them with the manifest; a mismatch or an unreadable file is :class:`StoreCorrupt`.

Asked to repair (``EdgeRuntime.open(..., repair=True)``, ``stamen edge repair``, the device daemon),
the store heals where it safely can: the newest *retained* version (the manifest's history, kept
for rollback) whose files pass the hash recorded for it becomes current, committed like a
rollback: one atomic manifest write, the high-water mark unchanged (the dropped versions cannot
come back as replays), the overlay kept (as a rollback keeps it). An overlay that fails its own
check cannot be rebuilt and is dropped: the device then serves the global weights. With no intact
version the store is left as it is and needs a full model (``stamen edge init``).

ONNX graphs are checked against the manifest's ``graph`` hash (the SHA-256 of the shared skeleton
``graph.onnx``, which every version's ``model.onnx`` copies) and healed rather than dropped: a
skeleton that is missing or fails it is rewritten from a retained version's graph that passes, and a
version whose weights pass but whose graph does not gets the skeleton's copy back (atomic writes;
neither is the commit point, the manifest does not change). With no intact copy of the graph the
store needs a full model. A store made before the hash was recorded has no ``graph``: its graphs are
only checked to exist (the skeleton may have rotted too, so comparing with it could blame intact
versions).

Only evidence against the files counts: a missing file, unparsable or truncated weights, a hash that
differs, an ONNX graph that is missing or fails the recorded graph hash. A read that fails
otherwise (EIO from a failing card, EACCES, too many open files) is raised as the ``OSError`` it is
and changes nothing: it may pass on the next try, and dropping an intact version (or an overlay,
which nobody can send again) for it would lose data.

Everything here runs with the store lock held by the caller.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stamen.protocols import TensorInfo, model_hash

from .errors import StoreCorrupt
from .manifest import Manifest, VersionEntry, load_manifest, save_manifest
from .onnx_backend import GRAPH, SKELETON, OnnxBackend
from .overlay import read_overlay
from .store import Backend, tidy_store, version_dir

__all__ = ["Repair", "heal_version", "open_locked", "overlay_fault", "version_fault", "weights_fault"]

_MISSING = frozenset([errno.ENOENT, errno.ENOTDIR])


@dataclass(frozen=True)
class Repair:
    """What opening with ``repair=True`` changed: the version served before and after, and why."""

    from_version: int
    to_version: int
    reason: str

    def __str__(self) -> str:
        return f"version {self.from_version} -> {self.to_version} ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``EdgeRuntime.status()["repaired"]``)."""
        return {"from_version": self.from_version, "to_version": self.to_version, "reason": self.reason}


def _missing(exc: OSError) -> bool:
    """A file or directory that is not there (rot); any other ``OSError`` (EIO, EACCES, EMFILE, ...)
    may pass on a later try and is no evidence against the files."""
    return exc.errno in _MISSING or isinstance(exc, (FileNotFoundError, NotADirectoryError))


def version_fault(store: Path, backend: Backend, manifest: Manifest, entry: VersionEntry) -> str | None:
    """Why version ``entry``'s files are unusable (None: they are intact): its weights
    (:func:`weights_fault`), else (ONNX) a graph that is missing or, with a recorded ``graph``
    hash, differs from it.

    Raises
    ------
    OSError
        Any read failure but a missing file: it proves nothing, so nothing may be dropped for it.
    """
    fault = weights_fault(store, backend, manifest.tensors, entry)
    return fault if fault is not None else _graph_fault(store, backend, manifest, entry)


def _graph_fault(store: Path, backend: Backend, manifest: Manifest, entry: VersionEntry) -> str | None:
    graph = backend.files_fault(version_dir(store, entry.version), manifest.graph)
    return None if graph is None else f"version {entry.version}: {graph}"


def weights_fault(
    store: Path, backend: Backend, table: tuple[TensorInfo, ...], entry: VersionEntry
) -> str | None:
    """Why version ``entry``'s weights are unusable (None: intact): missing, truncated, unparsable or
    differing from the hash the manifest recorded. Read, not mapped (a bad sector is an error, not
    SIGBUS); ONNX weights one tensor at a time. An ``OSError`` but a missing file is raised."""
    vdir = version_dir(store, entry.version)
    try:
        got = model_hash(backend.read_unmapped(vdir, table))
    except OSError as exc:
        if not _missing(exc):
            raise
        return f"files of version {entry.version} are missing: {exc}"
    except ValueError as exc:  # truncated or unparsable weights
        return f"weights of version {entry.version} cannot be read: {exc}"
    return None if got == entry.hash else f"weights of version {entry.version} fail their hash check"


def overlay_fault(store: Path, manifest: Manifest) -> str | None:
    """Why the personal overlay does not match its recorded hash (None: it does, or there is none).
    An ``OSError`` other than a missing file is raised, as by :func:`version_fault`."""
    o = manifest.overlay
    if o is None:
        return None
    try:
        got = model_hash(read_overlay(store / o.file, manifest.tensors, mapped=False))
    except OSError as exc:
        if not _missing(exc):
            raise
        return f"the personal overlay is missing: {exc}"
    except ValueError as exc:
        return f"the personal overlay cannot be read: {exc}"
    return None if got == o.hash else "the personal overlay fails its hash check"


def open_locked(
    store: Path, backend: Backend, *, verify: bool, repair: bool
) -> tuple[Manifest, Repair | None]:
    """Under the store lock: re-read the manifest, remove crash leftovers, then check the current
    version, the ONNX skeleton (with a recorded ``graph`` hash) and the overlay (``verify``) or
    repair them (``repair``); return the manifest to serve.

    Raises
    ------
    StoreCorrupt
        A check failed (without ``repair``: naming ``stamen edge repair``), or no retained version
        (or no copy of the graph) is intact (the store needs a full model).
    """
    manifest = load_manifest(store)
    tidy_store(store, manifest)  # committed already: leftovers do not block opening
    if repair:
        return _repair(store, backend, manifest)
    if verify:
        fault = version_fault(store, backend, manifest, manifest.current)
        fault = fault or _skeleton_fault(backend, manifest) or overlay_fault(store, manifest)
        if fault is not None:
            raise StoreCorrupt(
                f"{fault} (`stamen edge repair --model {store}` serves the newest intact retained version)"
            )
    return manifest, None


def _skeleton_fault(backend: Backend, manifest: Manifest, unreadable: bool = False) -> str | None:
    """Why the ONNX skeleton fails the recorded graph hash (None: it passes, or there is no hash).
    A read error but a missing file is no evidence: serving never reads the skeleton, so it is not
    a fault for opening (None), and (``unreadable``, for repair) a reason to rewrite it from a
    verified copy, which loses nothing."""
    if manifest.graph is None or not isinstance(backend, OnnxBackend):
        return None  # a torch store, or one made before the graph's hash was recorded
    try:
        return backend.skeleton_fault(manifest.graph)
    except OSError as exc:  # not missing (that is a fault above): EIO, EACCES, ...
        return f"{SKELETON} cannot be read: {exc}" if unreadable else None


def _full_model(store: Path, what: str) -> StoreCorrupt:
    return StoreCorrupt(
        f"{what}: the store needs a full model; move it aside (keep its trusted.pem) and run `stamen "
        f"edge init --onnx MODEL.onnx | --torch MODEL.safetensors --model {store} --trust trusted.pem`"
    )


def _heal_skeleton(store: Path, backend: Backend, manifest: Manifest) -> list[str]:
    """Rewrite a rotten or missing skeleton from a retained version's graph that passes the
    recorded hash (the manifest is unchanged); what was done, for the Repair reason."""
    fault = _skeleton_fault(backend, manifest, unreadable=True)
    if fault is None or manifest.graph is None or not isinstance(backend, OnnxBackend):
        return []
    dirs = [version_dir(store, h.version) for h in reversed(manifest.history)]
    source = backend.heal_skeleton(dirs, manifest.graph)
    if source is None:
        raise _full_model(store, f"{fault} and no retained version's {GRAPH} passes the graph hash")
    return [f"{fault}; rewritten from {source.name}/{GRAPH}"]


def heal_version(
    store: Path, backend: Backend, manifest: Manifest, entry: VersionEntry
) -> tuple[str | None, str | None]:
    """``(fault, healed)`` for version ``entry``: why its files are unusable (None: usable), and what
    was rewritten to make them so: an ONNX version whose weights pass but whose graph does not gets
    the skeleton's graph back, checked against the recorded hash (``StoreCorrupt`` if the skeleton
    fails it). An ``OSError`` but a missing file is raised, as by :func:`version_fault`."""
    fault = weights_fault(store, backend, manifest.tensors, entry)
    if fault is not None:
        return fault, None
    graph = _graph_fault(store, backend, manifest, entry)
    if graph is None:
        return None, None
    if manifest.graph is None or not isinstance(backend, OnnxBackend):
        return graph, None
    backend.heal_graph(version_dir(store, entry.version), manifest.graph)
    return None, f"{graph}; rewritten from {SKELETON}"


def _newest_intact(store: Path, backend: Backend, manifest: Manifest) -> tuple[list[VersionEntry], list[str]]:
    """The history without its corrupt newest versions, and why each was dropped or healed
    (:func:`heal_version`; the skeleton was checked, and healed, first)."""
    history, notes = list(manifest.history), []
    while history:
        fault, healed = heal_version(store, backend, manifest, history[-1])
        notes += [n for n in (healed, fault) if n is not None]
        if fault is None:
            break
        history.pop()
    return history, notes


def _repair(store: Path, backend: Backend, manifest: Manifest) -> tuple[Manifest, Repair | None]:
    """Heal the graphs where an intact copy exists, drop corrupt versions from the top of the
    history (and a corrupt overlay), committed at once."""
    faults = _heal_skeleton(store, backend, manifest)
    history, dropped = _newest_intact(store, backend, manifest)
    faults += dropped
    if not history:
        versions = ", ".join(str(h.version) for h in reversed(manifest.history))
        raise _full_model(
            store, f"no retained version of {store} passes its hash check (versions {versions})"
        )
    bad_overlay = overlay_fault(store, manifest)
    if bad_overlay is not None:
        faults.append(f"{bad_overlay}; overlay dropped")
    if not faults:
        return manifest, None
    fixed = manifest.with_history(history)  # the high-water mark stays, as in a rollback
    fixed = replace(fixed, overlay=None if bad_overlay is not None else manifest.overlay)
    if fixed != manifest:
        save_manifest(store, fixed)  # the commit point (healed graphs alone change no manifest)
        tidy_store(store, fixed)  # removes the dropped versions' directories and overlay
    return fixed, Repair(manifest.current.version, fixed.current.version, "; ".join(faults))
