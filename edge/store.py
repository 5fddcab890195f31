"""On-disk layout of a model store, store creation, locking and crash cleanup.

::

    DIR/manifest.json                    commit point (stamen.edge.manifest)
    DIR/trusted.pem                      the trusted Ed25519 public key (PEM)
    DIR/graph.onnx                       ONNX only: skeleton graph, every weight external
    DIR/versions/v<version:020d>/        one directory per retained version
        model.onnx + weights.data        (ONNX backend)
        weights.safetensors              (torch backend)
    DIR/overlay-<hash16>.safetensors     the personal overlay (additive deltas), if any
    DIR/.lock                            advisory lock held by every writer

A version directory is built as ``versions/.shadow-*``, fsynced and renamed into place before the
manifest that names it is committed; whatever a crash leaves behind that the manifest does not
name is garbage, removed by :func:`clean_store` under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stamen.protocols import Verifier, model_hash, tensor_table

from .archspec import parse_arch, state_shapes
from .errors import StoreCorrupt
from .fsutil import fsync_dir, publish_dir, remove_tree, write_new
from .manifest import Manifest, VersionEntry, save_manifest
from .onnx_backend import OnnxBackend, read_onnx_source
from .torch_backend import TorchBackend, read_safetensors_source

__all__ = [
    "Backend",
    "clean_store",
    "create_store",
    "make_backend",
    "store_lock",
    "tidy_store",
    "version_dir",
]

log = logging.getLogger("stamen.edge")

TRUSTED = "trusted.pem"
VERSIONS = "versions"
LOCK = ".lock"
Backend = OnnxBackend | TorchBackend


def version_dir(store: Path, version: int) -> Path:
    """Directory of ``version`` inside ``store``."""
    return store / VERSIONS / f"v{version:020d}"


def make_backend(kind: str, store: Path, graph: str | None = None) -> Backend:
    """The backend object for ``kind`` (``onnx`` or ``torch``; ``graph``: the manifest's hash of an
    ONNX store's skeleton, checked before a new version copies it)."""
    if kind == "onnx":
        return OnnxBackend(store, graph)
    if kind == "torch":
        return TorchBackend(store)
    raise ValueError(f"backend must be 'onnx' or 'torch', got {kind!r}")


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``store`` for the duration of a change (blocks until free).

    The lock file is opened with ``O_NOFOLLOW``: a symlink planted at ``.lock`` is refused with a
    :class:`StoreCorrupt` naming it, never followed (``O_CREAT`` would create its target).
    """
    path = store / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreCorrupt(
                f"{path} is a symbolic link; refusing to follow it (remove the link to unlock the store)"
            ) from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _real_dir(path: Path) -> None:
    """Refuse a store whose ``versions`` folder is a link (every version would live elsewhere)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise StoreCorrupt(f"{path} is missing") from None
    if not stat.S_ISDIR(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
        raise StoreCorrupt(f"{path} is {kind}; refusing to use it")


def clean_store(store: Path, manifest: Manifest) -> None:
    """Remove shadows, temp files, unreferenced versions and overlays left by a crash.

    Anything at such a name is removed as what it is: a planted symlink is unlinked (its target
    outside the store is never touched), a directory removed without following links inside it.

    Raises
    ------
    StoreCorrupt
        If ``versions`` is a symbolic link or not a directory.
    OSError
        Naming the path, if garbage cannot be removed.
    """
    _real_dir(store / VERSIONS)
    keep = {version_dir(store, h.version).name for h in manifest.history}
    for child in (store / VERSIONS).iterdir():
        if child.name not in keep:
            remove_tree(child)
        elif child.is_dir() and not child.is_symlink():  # a graph rewrite (repair) cut short
            for leftover in child.glob("*.tmp-*"):
                remove_tree(leftover)
    overlay = manifest.overlay.file if manifest.overlay is not None else None
    for child in store.iterdir():
        stale_overlay = child.name.startswith("overlay-") and child.name != overlay
        if stale_overlay or ".tmp-" in child.name:
            remove_tree(child)  # whatever it is: a file, a planted link or directory


def tidy_store(store: Path, manifest: Manifest) -> None:
    """:func:`clean_store` once ``manifest`` is committed: what cannot be removed (an ``OSError``,
    e.g. on a failing or read-only disk) is left with a warning; no version refers to it, and a
    change that has committed must not be reported as failed."""
    try:
        clean_store(store, manifest)
    except OSError as exc:
        log.warning("edge store %s: leftovers not removed (%s)", store, exc)


def _source(path: Path) -> tuple[str, dict[str, np.ndarray], bytes, str | None]:
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == ".onnx":
        weights, skeleton, arch = read_onnx_source(path)
        return "onnx", weights, skeleton, arch
    if path.suffix == ".safetensors":
        weights, arch = read_safetensors_source(path)
        return "torch", weights, b"", arch
    raise ValueError(f"{path}: model files must end in .onnx or .safetensors")


def _check_arch(arch: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> None:
    """The weights must be exactly the architecture's state_dict (names and shapes; no torch)."""
    got = {k: tuple(v.shape) for k, v in weights.items()}
    want = state_shapes(parse_arch(arch))
    bad = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
    if bad:
        raise ValueError(f"weights do not match the arch spec: {bad[:4]} missing, extra or misshapen")


def create_store(
    store: Path, source: Path, trust: Path, *, model_id: str | None = None, arch: str | None = None
) -> Manifest:
    """Create a new store at ``store`` from a model file, trusting the public key ``trust``.

    Parameters
    ----------
    store : Path
        Target directory; must not exist or be empty.
    source : Path
        ``.onnx`` (ONNX backend) or ``.safetensors`` state_dict (torch backend).
    trust : Path
        PEM Ed25519 public key whose signatures the store accepts.
    model_id : str or None
        Defaults to the source file's stem.
    arch : str or None
        Architecture spec JSON overriding the one in the file's metadata.

    Returns
    -------
    Manifest
        At version 0 with the source's weights.
    """
    if not Path(trust).is_file():
        raise FileNotFoundError(f"trusted key file {trust} does not exist")
    Verifier.from_files(trust)  # a bad key file fails before anything is written
    backend_kind, weights, skeleton, file_arch = _source(source)
    arch_text = arch or file_arch
    arch_obj = parse_arch(arch_text).to_json() if arch_text else None
    if arch_obj is not None:
        _check_arch(arch_obj, weights)
    if store.exists() and any(store.iterdir()):
        raise ValueError(f"{store} already exists and is not empty")
    created = not store.exists()
    try:
        return _populate(store, trust, backend_kind, weights, skeleton, arch_obj, model_id or source.stem)
    except BaseException:  # e.g. a full disk: leave no half-made store behind
        with contextlib.suppress(OSError):
            for child in [store] if created else list(store.iterdir()):
                remove_tree(child)
        raise


def _populate(
    store: Path,
    trust: Path,
    backend_kind: str,
    weights: dict[str, np.ndarray],
    skeleton: bytes,
    arch: Mapping[str, Any] | None,
    model_id: str,
) -> Manifest:
    """Write a new store's files (version 0) into the empty directory ``store``."""
    (store / VERSIONS).mkdir(parents=True, exist_ok=True)
    write_new(store / TRUSTED, trust.read_bytes())
    backend = make_backend(backend_kind, store)
    backend.install(skeleton)
    table = tensor_table(weights)
    shadow = store / VERSIONS / ".shadow-init"
    shadow.mkdir()
    backend.write(shadow, weights, table)
    publish_dir(shadow, version_dir(store, 0))
    manifest = Manifest(
        model_id=model_id,
        backend=backend_kind,
        key_id=next(iter(Verifier.from_files(trust).key_ids)),
        tensors=table,
        history=(VersionEntry(0, model_hash(weights), None),),
        high_water=0,
        arch=arch,
        graph=hashlib.sha256(skeleton).hexdigest() if backend_kind == "onnx" else None,
    )
    fsync_dir(store)
    save_manifest(store, manifest)
    return manifest
