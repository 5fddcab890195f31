"""What an :class:`~stamen.edge.runtime.EdgeRuntime` reports of the manifest it holds (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stamen.protocols import BaseModelMismatch

from .manifest import Manifest, ModelVersion, load_manifest
from .repair import Repair

__all__ = ["check_base", "committed_version", "status_of", "version_of"]


def version_of(manifest: Manifest) -> ModelVersion:
    """The current global version ``manifest`` names."""
    cur = manifest.current
    return ModelVersion(cur.version, cur.hash, cur.prev_hash)


def committed_version(store: Path) -> ModelVersion:
    """The version committed in ``store`` now, by any process: what an apply checks a delta's base
    against (a session serves its own until its apply or rollback commits; the manifest is replaced
    atomically, so no lock is needed to read it)."""
    return version_of(load_manifest(store))


def check_base(now: ModelVersion, base: ModelVersion | None) -> None:
    """Refuse (:class:`BaseModelMismatch`) what was computed against ``base`` if ``now`` differs."""
    if base is not None and now != base:
        raise BaseModelMismatch(f"the global model changed from version {base.version} to {now.version}")


def status_of(manifest: Manifest, repaired: Repair | None) -> dict[str, Any]:
    """JSON-ready summary (``EdgeRuntime.status()``): version, hash, history, overlay, key id,
    backend, size, and what opening repaired (``repaired``: None, or from/to version and reason)."""
    m, o = manifest, manifest.overlay
    return {
        "model_id": m.model_id,
        "backend": m.backend,
        "version": m.current.version,
        "hash": m.current.hash,
        "prev_hash": m.current.prev_hash,
        "high_water": m.high_water,
        "key_id": m.key_id,
        "history": [{"version": h.version, "hash": h.hash} for h in m.history],
        "overlay": None if o is None else {"plan": o.plan, "tensors": list(o.tensors), "hash": o.hash},
        "tensors": len(m.tensors),
        "parameters": int(sum(t.size for t in m.tensors)),
        "arch": dict(m.arch) if m.arch is not None else None,
        "repaired": None if repaired is None else repaired.to_json(),
    }
