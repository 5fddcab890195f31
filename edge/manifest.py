"""The store manifest: which version is current, its hash, history and personal overlay.

``manifest.json`` is the single commit point of a store: every change (apply, rollback, a new
overlay) writes the new files first and then replaces the manifest atomically. Its JSON form::

    {"format": "stamen-edge-store/1", "model_id": str, "backend": "onnx" | "torch",
     "key_id": str, "high_water": int, "arch": object | null,
     "tensors": [[name, [dims], dtype], ...],
     "history": [{"version": int, "hash": str, "prev_hash": str | null}, ...],   # oldest first
     "overlay": null | {"file": str, "hash": str, "plan": str, "tensors": [name, ...]},
     "graph": str}                                     # optional, ONNX only: SHA-256 of graph.onnx

The last history entry is the current version. ``high_water`` is the highest version ever
applied: updates must exceed it, so neither a replay nor an update from before a rollback can be
applied (TUF's rollback-attack rule). ``graph`` is the SHA-256 (hex) of the ONNX skeleton graph,
which every version's ``model.onnx`` copies; stores made before it was recorded have none and their
graphs are then not checked.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from stamen.protocols import TensorInfo

from .fsutil import atomic_write

__all__ = [
    "FORMAT",
    "MANIFEST",
    "Manifest",
    "ModelVersion",
    "Overlay",
    "VersionEntry",
    "load_manifest",
    "save_manifest",
]

FORMAT = "stamen-edge-store/1"
MANIFEST = "manifest.json"
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_BACKENDS = ("onnx", "torch")


@dataclass(frozen=True)
class ModelVersion:
    """A version of the global model: number, content hash and the previous version's hash."""

    version: int
    hash: str
    prev_hash: str | None


@dataclass(frozen=True)
class VersionEntry:
    """One retained version: number, content hash (``model_hash``) and its predecessor's hash."""

    version: int
    hash: str
    prev_hash: str | None


@dataclass(frozen=True)
class Overlay:
    """The personal overlay: ``file`` (in the store) holds additive deltas for ``tensors``."""

    file: str
    hash: str
    plan: str
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """Parsed, validated manifest (see the module docstring for the JSON layout)."""

    model_id: str
    backend: str
    key_id: str
    tensors: tuple[TensorInfo, ...]
    history: tuple[VersionEntry, ...]
    high_water: int
    arch: Mapping[str, Any] | None = None
    overlay: Overlay | None = None
    graph: str | None = None  # SHA-256 of the ONNX skeleton graph (None: not recorded)

    @property
    def current(self) -> VersionEntry:
        """The version the store serves."""
        return self.history[-1]

    def with_history(
        self, history: Sequence[VersionEntry], high_water: int | None = None, key_id: str | None = None
    ) -> Manifest:
        """A copy with a new history (and high-water mark, and the id of the key that signed it)."""
        hw = self.high_water if high_water is None else high_water
        return replace(self, history=tuple(history), high_water=hw, key_id=key_id or self.key_id)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json``."""
        overlay = None
        if self.overlay is not None:
            o = self.overlay
            overlay = {"file": o.file, "hash": o.hash, "plan": o.plan, "tensors": list(o.tensors)}
        out: dict[str, Any] = {
            "format": FORMAT,
            "model_id": self.model_id,
            "backend": self.backend,
            "key_id": self.key_id,
            "high_water": self.high_water,
            "arch": dict(self.arch) if self.arch is not None else None,
            "tensors": [[t.name, list(t.shape), t.dtype] for t in self.tensors],
            "history": [
                {"version": h.version, "hash": h.hash, "prev_hash": h.prev_hash} for h in self.history
            ],
            "overlay": overlay,
        }
        if self.graph is not None:
            out["graph"] = self.graph
        return out


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"corrupt store manifest: {what}")


def _entry(obj: Any) -> VersionEntry:
    _need(isinstance(obj, dict) and set(obj) == {"version", "hash", "prev_hash"}, "bad history entry")
    version, digest, prev = obj["version"], obj["hash"], obj["prev_hash"]
    _need(type(version) is int and version >= 0, "history version must be an int >= 0")
    _need(isinstance(digest, str) and bool(_HASH_RE.fullmatch(digest)), "history hash must be 64 hex")
    _need(prev is None or (isinstance(prev, str) and bool(_HASH_RE.fullmatch(prev))), "bad prev_hash")
    return VersionEntry(version, digest, prev)


def _overlay(obj: Any) -> Overlay | None:
    if obj is None:
        return None
    _need(isinstance(obj, dict) and set(obj) == {"file", "hash", "plan", "tensors"}, "bad overlay")
    _need(isinstance(obj["file"], str) and "/" not in obj["file"], "overlay file must be a plain name")
    _need(isinstance(obj["tensors"], list) and all(isinstance(t, str) for t in obj["tensors"]), "bad overlay")
    return Overlay(obj["file"], str(obj["hash"]), str(obj["plan"]), tuple(obj["tensors"]))


def parse_manifest(obj: Any) -> Manifest:
    """Validate a manifest JSON object.

    Raises
    ------
    ValueError
        Naming the first field that is missing or malformed.
    """
    _need(isinstance(obj, dict) and obj.get("format") == FORMAT, f"format must be {FORMAT!r}")
    _need(obj.get("backend") in _BACKENDS, f"backend must be one of {_BACKENDS}")
    history = tuple(_entry(e) for e in obj.get("history") or [])
    _need(bool(history), "history must list at least the current version")
    _need(all(a.version < b.version for a, b in itertools.pairwise(history)), "history must increase")
    high_water = obj.get("high_water")
    _need(type(high_water) is int and high_water >= history[-1].version, "high_water below current")
    tensors = tuple(
        TensorInfo(str(t[0]), tuple(int(d) for d in t[1]), str(t[2])) for t in obj.get("tensors") or []
    )
    _need(bool(tensors), "tensor table is empty")
    arch = obj.get("arch")
    _need(arch is None or isinstance(arch, dict), "arch must be an object or null")
    graph = obj.get("graph")
    _need(graph is None or (isinstance(graph, str) and bool(_HASH_RE.fullmatch(graph))), "bad graph hash")
    return Manifest(
        model_id=str(obj.get("model_id")),
        backend=obj["backend"],
        key_id=str(obj.get("key_id")),
        tensors=tensors,
        history=history,
        high_water=high_water,
        arch=arch,
        overlay=_overlay(obj.get("overlay")),
        graph=graph,
    )


def load_manifest(store: Path) -> Manifest:
    """Read and validate ``store/manifest.json``.

    Raises
    ------
    FileNotFoundError
        If ``store`` has no manifest (not a model store).
    ValueError
        If the manifest is not valid JSON or fails validation.
    """
    path = store / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{store} is not an edge model store (no {MANIFEST})")
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt store manifest: {exc}") from None
    return parse_manifest(obj)


def save_manifest(store: Path, manifest: Manifest) -> None:
    """Atomically replace ``store/manifest.json`` (the commit point of every store change)."""
    data = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode("utf-8")

    def write(fh: BinaryIO) -> None:
        fh.write(data)

    atomic_write(store / MANIFEST, write)
