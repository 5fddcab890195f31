"""``EdgeRuntime``: apply signed delta updates to a device's model store, crash-safe, with rollback.

``apply(envelope_bytes)``::

    verify the Ed25519 signature (before parsing anything) -> base hash == current version
    -> version > every version ever applied -> decode with the store's own tensor table
    -> new = old + delta, computed straight into a shadow version (ONNX: one buffer written with pwrite),
       validated (finite) and hashed in the same pass (edge/fused.py) -> fsync
    -> target hash (if the sender gave one) -> atomic rename
    -> build the new inference session (global weights + personal overlay)
    -> commit the manifest (atomic rename: the single commit point) -> swap sessions

The payload is never copied: dense tensors are decoded as views into the input bytes.

Every refusal raises a :class:`~stamen.protocols.StamenError` (a ``ValueError``) and leaves the
store and the serving session untouched. Sessions are double-buffered: the old one keeps serving
until the new one is built, then the reference is swapped under a lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stamen.protocols import (
    CodecPipeline,
    CodecSpec,
    Envelope,
    ValidationError,
    Verifier,
    keys,
    unpack,
)

from .errors import RefusedBase, StaleVersion, StoreCorrupt
from .fsutil import publish_dir, remove_tree
from .fused import start_apply
from .inputs import InputSpec
from .manifest import Manifest, ModelVersion, VersionEntry, load_manifest, save_manifest
from .overlay import check_overlay, manifest_overlay, write_overlay
from .repair import heal_version, open_locked
from .shadow import ShadowPrep, ShadowWeights
from .status import check_base, status_of, version_of
from .store import TRUSTED, VERSIONS, make_backend, store_lock, tidy_store, version_dir

log = logging.getLogger("stamen.edge")

__all__ = ["TARGET_KEY", "EdgeRuntime", "ModelVersion"]

#: Envelope meta key holding ``model_hash`` of the weights the device must obtain.
TARGET_KEY = keys.META_TARGET
#: Envelope meta key holding the model id the update is for (optional).
MODEL_KEY = keys.META_MODEL
SHADOW = ".shadow-apply"  #: the shadow version directory an apply builds (one at a time: the lock)


class EdgeRuntime:
    """A model store opened for serving and updating. Build with :meth:`open`.

    Parameters
    ----------
    store : Path
        Store directory (created by :func:`stamen.edge.store.create_store`).
    verify : bool, default True
        Recompute the current weights' hash (and the overlay's) and refuse a corrupt store.
    threads : int, default 1
        onnxruntime intra-op threads (pin explicitly: research/edge.md §8).
    keep : int, default 3
        Versions retained for rollback, >= 2.
    serve : bool, default True
        Build the inference session now; with False it is built on the first :meth:`predict`, of the
        version committed then (``stamen edge status`` never loads onnxruntime).
    repair : bool, default False
        If the current version (or the overlay) fails its check, serve the newest retained version
        that passes instead (committed like :meth:`rollback`; see :mod:`stamen.edge.repair`) and
        record it in :attr:`repaired`. Off by default: a library caller's version never changes
        unasked; the device daemon and ``stamen edge repair`` turn it on.
    """

    def __init__(
        self,
        store: Path,
        *,
        verify: bool = True,
        threads: int = 1,
        keep: int = 3,
        serve: bool = True,
        repair: bool = False,
    ) -> None:
        if keep < 2 or threads < 1:
            raise ValueError(f"keep must be >= 2 and threads >= 1, got keep={keep}, threads={threads}")
        self.store, self.threads, self.keep = Path(store), threads, keep
        self._lock = threading.Lock()
        #: Seconds per phase of the last :meth:`apply`: verify, decode, prepare_wait (shadow file
        #: not yet ready), add (compute + write into the shadow, validate), fsync, hash_wait (hash
        #: not overlapped by the fsync), rename, session, commit.
        self.timings: dict[str, float] = {}
        self.manifest = load_manifest(self.store)
        self.verifier = Verifier.from_files(self.store / TRUSTED)
        if self.manifest.key_id not in self.verifier.key_ids:  # the key of the latest update
            raise StoreCorrupt(
                f"{TRUSTED} no longer holds key {self.manifest.key_id!r}, which signed the store's latest "
                "update (when rotating, keep it until the device has applied one signed with the new key)"
            )
        self.backend = make_backend(self.manifest.backend, self.store, self.manifest.graph)
        self._session: Any = None
        self._signed_by: str | None = None
        with store_lock(self.store):
            # Re-read the manifest, and read the version it names, under the lock: cleaning with the
            # stale one would delete a version another process committed since, and a rollback,
            # prune or repair elsewhere removes a version only while holding it.
            self.manifest, self.repaired = open_locked(self.store, self.backend, verify=verify, repair=repair)
            if serve:
                self._session = self._build_session(self.manifest)

    @classmethod
    def open(
        cls,
        store: str | Path,
        *,
        verify: bool = True,
        threads: int = 1,
        keep: int = 3,
        serve: bool = True,
        repair: bool = False,
    ) -> EdgeRuntime:
        """Open an existing store (same parameters as the constructor)."""
        return cls(Path(store), verify=verify, threads=threads, keep=keep, serve=serve, repair=repair)

    # ---------------------------------------------------------------- reading
    def _vdir(self, manifest: Manifest) -> Path:
        return version_dir(self.store, manifest.current.version)

    def _read_global(self, manifest: Manifest) -> dict[str, np.ndarray]:
        return self.backend.read(self._vdir(manifest), manifest.tensors)

    def snapshot(self) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        """The global version committed now (by any process) and its read-only weights (memory-mapped
        for ONNX), read together under the store lock: no change of the store runs in between."""
        with store_lock(self.store):
            manifest = load_manifest(self.store)  # not self.manifest: its files may be gone
            return version_of(manifest), self._read_global(manifest)

    def global_weights(self) -> dict[str, np.ndarray]:
        """Read-only weights of the current global version (:meth:`snapshot`, without the version)."""
        return self.snapshot()[1]

    def overlay(self) -> dict[str, np.ndarray]:
        """The personal overlay (additive deltas per tensor); empty if none."""
        with store_lock(self.store):
            return manifest_overlay(self.store, load_manifest(self.store))

    def effective_weights(self) -> dict[str, np.ndarray]:
        """Global weights plus the personal overlay, both committed now: what a session serves."""
        with store_lock(self.store):
            manifest = load_manifest(self.store)
            weights, overlay = dict(self._read_global(manifest)), manifest_overlay(self.store, manifest)
        for name, delta in overlay.items():
            weights[name] = weights[name] + delta
        return weights

    def version(self) -> ModelVersion:
        """The current global version."""
        return version_of(self.manifest)

    def _build_session(self, manifest: Manifest, overlay: Mapping[str, np.ndarray] | None = None) -> Any:
        vdir = self._vdir(manifest)
        overlay = manifest_overlay(self.store, manifest) if overlay is None else overlay
        overrides = {}
        if overlay:
            base = self.backend.read(vdir, manifest.tensors)
            overrides = {name: base[name] + delta for name, delta in overlay.items()}
        return self.backend.session(vdir, manifest.tensors, overrides, manifest.arch, self.threads)

    def _serving(self) -> Any:
        session = self._session  # one atomic reference read: a concurrent swap cannot split a call
        if session is None:
            # Under the store lock, from the manifest committed now (any process): no change removes it
            with store_lock(self.store):
                if self._session is None:
                    manifest = load_manifest(self.store)
                    session = self._build_session(manifest)
                    with self._lock:
                        self.manifest, self._session = manifest, session
                session = self._session
        return session

    def input_spec(self) -> InputSpec | None:
        """What one input sample must look like (None: the store cannot serve)."""
        return getattr(self._serving(), "input_spec", None)

    def predict(self, x: np.ndarray, source: str = "input") -> np.ndarray:
        """Model outputs for a batch ``x`` (served by whichever session is current).

        Raises
        ------
        ValueError
            If ``x`` does not have the model's input shape (one line naming ``source``).
        """
        session = self._serving()
        spec = getattr(session, "input_spec", None)
        if spec is not None:
            spec.check(np.asarray(x), source)
        return np.asarray(session.run(np.asarray(x)))

    def status(self) -> dict[str, Any]:
        """JSON-ready summary of the served manifest (:func:`~stamen.edge.status.status_of`)."""
        return status_of(self.manifest, self.repaired)

    # ---------------------------------------------------------------- updating
    def _check(self, env: Envelope, committed: Manifest) -> None:
        self._signed_by = env.key_id  # recorded in the manifest when the version commits
        cur = committed.current
        if env.base_hash != cur.hash:
            raise RefusedBase(
                f"update is based on {env.base_hash[:16]}…, the device holds version {cur.version} "
                f"({cur.hash[:16]}…)",
                version_of(committed),
            )
        if env.version <= committed.high_water:
            raise StaleVersion(
                f"update version {env.version} is not newer than {committed.high_water} "
                "(a replay or a rollback)"
            )
        model = env.meta.get(MODEL_KEY)
        if model is not None and model != committed.model_id:
            msg = f"update is for model {model!r}, this store holds {committed.model_id!r}"
            raise RefusedBase(msg, version_of(committed))
        if env.tensors != committed.tensors:
            raise ValidationError("update tensor table differs from the model's (names, shapes or dtypes)")

    def _lap(self, phase: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[phase] = now - t0
        return now

    def apply(self, data: bytes) -> ModelVersion:
        """Verify, check, decode and apply one signed update envelope (see module docstring).

        Raises
        ------
        SignatureError
            Unsigned, unknown key, bad signature, tampered or truncated bytes.
        MalformedUpdate, CodecError
            Bytes that are not a well-formed envelope or payload.
        BaseModelMismatch
            Made for another version or model (a RefusedBase: ``held``, the version it held).
        StaleVersion
            Replay or rollback: version not above every version applied so far.
        ValidationError
            Wrong tensor table, non-finite values, or a result that misses the target hash.
        """
        self.timings = {}
        with store_lock(self.store):
            committed = load_manifest(self.store)  # any process's; served (self.manifest) once it commits
            prep = ShadowPrep(self.backend, self.store / VERSIONS / SHADOW, committed.tensors)
            try:
                shadow, version, digest = self._apply_locked(data, prep, committed)
            except BaseException:
                prep.discard()
                raise
            history = (*committed.history, VersionEntry(version, digest, committed.current.hash))
            manifest = committed.with_history(history[-self.keep :], version, self._signed_by)
            self._commit_version(manifest, shadow)
        return self.version()

    def _apply_locked(self, data: bytes, prep: ShadowPrep, committed: Manifest) -> tuple[Path, int, str]:
        """Verify, check, decode and write the shadow version; return it, its version and hash."""
        t0 = time.perf_counter()
        # The signature is checked before parsing; once it holds, the shadow file is prepared
        # on the other core while the payload digest is computed.
        env = unpack(data, self.verifier, zero_copy=True, on_authenticated=prep.start)
        t0 = self._lap("verify", t0)
        self._check(env, committed)
        # Decode against the store's own table: the header cannot make the decoder allocate
        # more. Read-only views suffice: the sum is computed into the shadow version.
        pipeline = CodecPipeline(CodecSpec.parse(env.codec))
        delta = pipeline.decode(env.payload, committed.tensors, writable=False)
        t0 = self._lap("decode", t0)
        out = prep.get()
        self._lap("prepare_wait", t0)
        replace_all = env.meta.get(keys.META_KIND) == keys.KIND_REPLACE
        if replace_all and TARGET_KEY not in env.meta:
            raise ValidationError("a replacement update must name its target hash")
        digest = self._write_shadow(out, delta, replace_all, committed)
        target = env.meta.get(TARGET_KEY)
        if target is not None and target != digest:
            raise ValidationError(f"updated weights hash {digest[:16]}… differs from the signed target")
        return prep.shadow, env.version, digest

    def _write_shadow(
        self, out: ShadowWeights, delta: Mapping[str, np.ndarray], replace_all: bool, committed: Manifest
    ) -> str:
        """Compute ``committed + delta`` (or, for a replacement, the sent weights themselves) into
        ``out``, make it durable; return its model hash."""
        table = committed.tensors
        t0 = time.perf_counter()
        # -0.0 + x == x bit for bit for every float x (+0.0 would turn -0.0 into +0.0)
        base = {t.name: np.full(t.shape, -0.0, t.dtype) for t in table} if replace_all else None
        worker = start_apply(base or self._read_global(committed), delta, out.views, table)
        try:
            t0 = self._lap("add", t0)
            out.sync()  # the hash thread keeps running during the fsync
            t0 = self._lap("fsync", t0)
            digest = worker.result()
            self._lap("hash_wait", t0)
        finally:
            worker.stop()
            out.close()
        return digest

    def _commit_version(self, manifest: Manifest, shadow: Path) -> None:
        final = self._vdir(manifest)
        remove_tree(final)  # a leftover of a crash before an earlier commit (never a live version)
        t0 = time.perf_counter()
        publish_dir(shadow, final)  # fsync the files (weights.data already is), rename, fsync dir
        self._lap("rename", t0)
        try:
            t0 = time.perf_counter()
            session = self._build_session(manifest)
            t0 = self._lap("session", t0)
            save_manifest(self.store, manifest)  # the commit point
            self._lap("commit", t0)
        except BaseException:
            self._drop_uncommitted(manifest, final)
            raise
        self._swap(manifest, session)

    def _drop_uncommitted(self, manifest: Manifest, final: Path) -> None:
        """After a failed commit, remove the new version directory unless the manifest on disk
        already names it (the rename went through and only the directory fsync failed); what
        cannot be removed now is garbage that :func:`clean_store` removes on the next change."""
        with contextlib.suppress(Exception):
            if load_manifest(self.store).current != manifest.current:
                remove_tree(final)

    def _swap(self, manifest: Manifest, session: Any) -> None:
        with self._lock:
            self.manifest, self._session = manifest, session
        tidy_store(self.store, manifest)  # drops pruned versions and replaced overlays (committed)

    def rollback(self) -> ModelVersion:
        """Serve the previous retained version again; the high-water mark stays.

        Raises
        ------
        ValueError
            If no earlier version is retained.
        StoreCorrupt
            If that version's files fail their recorded hash (nothing changes; a graph alone is healed).
        """
        with store_lock(self.store):
            committed = load_manifest(self.store)  # served (self.manifest) only once it commits
            if len(committed.history) < 2:
                raise ValueError(
                    f"no earlier version retained to roll back to (at version {committed.current.version})"
                )
            manifest = committed.with_history(committed.history[:-1])
            fault, healed = heal_version(self.store, self.backend, manifest, manifest.current)
            if fault is not None:
                raise StoreCorrupt(f"cannot roll back: {fault}")
            if healed is not None:
                log.warning("rolling back %s: %s", self.store, healed)
            session = self._build_session(manifest)
            save_manifest(self.store, manifest)
            self._swap(manifest, session)
        return self.version()

    def set_overlay(
        self, deltas: Mapping[str, np.ndarray], plan: str, base: ModelVersion | None = None
    ) -> None:
        """Store ``deltas`` (additive, per tensor) as the personal overlay and serve with it.

        An empty mapping clears the overlay. The overlay survives later global updates: each new
        version is served as ``global + overlay``.

        Raises
        ------
        ValidationError
            Unknown tensor names, wrong shapes or non-finite values.
        BaseModelMismatch
            ``base`` (the global version the deltas were computed against) is not the one committed.
        """
        check_overlay(deltas, self.manifest.tensors)
        with store_lock(self.store):
            committed = load_manifest(self.store)
            check_base(version_of(committed), base)  # under the lock: no change can follow it
            overlay = write_overlay(self.store, deltas, plan) if deltas else None
            manifest = replace(committed, overlay=overlay)
            session = self._build_session(manifest)
            save_manifest(self.store, manifest)
            self._swap(manifest, session)
