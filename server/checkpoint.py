"""The stamen server's own checkpoint: a manifest holding everything a run needs to resume.

Format (version 1): one safetensors file, ``<state-dir>/checkpoint.safetensors``. Version 2 (what
:func:`write_checkpoint` writes when an array reaches
:data:`~stamen.server.checkpoint_store.PART_MIN_BYTES`): the same file, but its large arrays live
in content-addressed part files, ``<state-dir>/parts/<sha256>.safetensors``, written once and named
by the metadata's ``parts`` (tensor key -> part name); see :mod:`stamen.server.checkpoint_store`.
Both versions are read.

- tensors ``w/<name>``: the global weights after the last completed round (float32);
  tensors ``s/<key>``: the arrays of the run's state parts (model history, FedBuff buffer, rule
  state, client states of a simulation, ...), named by the part that wrote them;
- the safetensors metadata key ``stamen.checkpoint`` holds one JSON object: ``format``,
  ``version``, ``step`` (completed rounds, or model versions in the asynchronous modes), ``mode``,
  ``finished``, ``stopped``, ``weights`` (the tensor names in the model's order), ``records``
  (the :class:`~stamen.server.history.RoundRecord` list so far), ``fingerprint`` (the run
  configuration, see :func:`fingerprint`), ``state`` (the parts' JSON trees), ``stamen`` (the
  version that wrote it) and ``digest`` (SHA-256 over every inline tensor's name, dtype, shape and
  bytes, and the ``parts`` table, so a flipped bit is found, not only a truncation; a part is
  checked against its own name).

Nothing is unpickled: the header is length-checked (:data:`MAX_HEADER_BYTES`) before it is parsed,
the file size is bounded (:data:`MAX_FILE_BYTES`), and every failure to read is one
:class:`CheckpointError` line naming the file and the reason.

Writing (:func:`write_checkpoint`) is atomic: the new parts first (each a temporary file, fsync'd,
renamed, then ``parts/`` fsync'd), then the manifest in a temporary file in the same directory,
written, flushed and fsync'd, renamed over the previous checkpoint, the directory fsync'd, and only
then the parts no manifest names any more deleted. The previous checkpoint and its parts stay whole
until the rename: a crash at any point leaves either the old or the new checkpoint, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from stamen._version import __version__
from stamen.protocols import StamenError
from stamen.server.checkpoint_compare import fingerprint as fingerprint
from stamen.server.checkpoint_compare import fingerprint_diff as fingerprint_diff
from stamen.server.checkpoint_compare import records_equal as records_equal
from stamen.server.history import RoundRecord
from stamen.server.records import ROUND_KEYS

FORMAT = "stamen-checkpoint"
VERSION = 2  # written when the checkpoint has part files; version 1 (all inline) otherwise
READS = (1, 2)
FILE_NAME = "checkpoint.safetensors"
META_KEY = "stamen.checkpoint"
TMP_PREFIX = ".checkpoint."
MAX_HEADER_BYTES = 64 * 2**20  # the JSON header (records, fingerprint, state trees)
MAX_FILE_BYTES = 64 * 2**30  # a whole checkpoint; a larger file is refused unread
WEIGHTS, STATE = "w/", "s/"
_PART_NAME = re.compile(r"[0-9a-f]{64}")

Weights = dict[str, np.ndarray]


class CheckpointError(StamenError):
    """A checkpoint cannot be read, does not belong to this run, or cannot be used to resume."""


def is_part_name(name: object) -> bool:
    """Whether ``name`` is a part file's name (64 lowercase hex digits: never a path)."""
    return isinstance(name, str) and _PART_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Checkpoint:
    """A run's state after a completed round (or model version).

    Attributes
    ----------
    step : int
        Completed rounds (``sync``) or released model versions (``fedasync``/``fedbuff``), ``>= 0``.
    mode : str
        ``server.mode`` of the run.
    weights : dict of str to ndarray
        The global model after ``step`` (float32).
    records : tuple of RoundRecord
        The records of rounds ``1 .. step``.
    fingerprint : mapping of str to str
        The run configuration (:func:`fingerprint`); a resume with another one is refused.
    state : mapping
        JSON tree of the run's state parts.
    arrays : mapping of str to ndarray
        The state parts' arrays.
    finished : bool
        The run ended (all rounds done, or stopped for good); resuming it only reports the result.
    stopped : str or None
        Why a finished run ended early (``"privacy budget exhausted"``), else None.
    """

    step: int
    mode: str
    weights: Mapping[str, np.ndarray]
    records: tuple[RoundRecord, ...]
    fingerprint: Mapping[str, str]
    state: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    finished: bool = False
    stopped: str | None = None
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # models in arrays: one part each
    parts: frozenset[str] = frozenset()  # the part files a read checkpoint names (not written)


def check_fingerprint(saved: Mapping[str, str], current: Mapping[str, str], where: Path) -> None:
    """Refuse to resume a run with another configuration: one line naming the differing keys."""
    diff = fingerprint_diff(saved, current)
    if not diff:
        return
    shown = ", ".join(f"{k} ({saved.get(k, '<unset>')} -> {current.get(k, '<unset>')})" for k in diff[:8])
    more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
    raise CheckpointError(
        f"state-dir {where} holds a run with another configuration: {shown}{more}; "
        "resume with the same configuration or use a new state-dir"
    )


# ---- encoding ---------------------------------------------------------------------------------


Split = Callable[[dict[str, np.ndarray]], dict[str, list[str]]]
"""Take the arrays to keep in part files out of a checkpoint's arrays; returns the ``parts`` table
(tensor key -> ``[part name, tensor name in the part]``)."""


def _digest(arrays: Mapping[str, np.ndarray], parts: Mapping[str, Any] | None = None) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    if parts:  # version 2 only: version 1's digest is over the inline tensors alone
        h.update(json.dumps(dict(parts), sort_keys=True).encode())
    return h.hexdigest()


def encode_checkpoint(ck: Checkpoint, split: Split | None = None) -> bytes:
    """The checkpoint's bytes (see the module docstring for the layout); with ``split``, the arrays
    it stores as parts are named, not included (format version 2)."""
    arrays: dict[str, np.ndarray] = {WEIGHTS + k: np.asarray(v, np.float32) for k, v in ck.weights.items()}
    arrays.update({STATE + k: np.asarray(v) for k, v in ck.arrays.items()})
    # little-endian, as safetensors stores them: a ``>f4`` array must match its digest read back
    arrays = {k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")) for k, v in arrays.items()}
    parts = {} if split is None else split(arrays)
    meta = {
        "format": FORMAT,
        "version": VERSION if parts else 1,
        "stamen": __version__,
        "step": int(ck.step),
        "mode": ck.mode,
        "finished": bool(ck.finished),
        "stopped": ck.stopped,
        "records": [_record_json(r) for r in ck.records],
        "weights": list(ck.weights),
        "fingerprint": dict(ck.fingerprint),
        "state": ck.state,
        "digest": _digest(arrays, parts),
        **({"parts": parts} if parts else {}),
    }
    return bytes(st_save(arrays, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))


def _record_json(rec: RoundRecord) -> dict[str, Any]:
    # NaN/inf travel as JSON's NaN/Infinity tokens (json.loads reads them back)
    return {k: getattr(rec, k) for k in ROUND_KEYS}


def decode_checkpoint(
    data: bytes, source: str = "checkpoint", resolve: Callable[[Any], dict[str, np.ndarray]] | None = None
) -> Checkpoint:
    """Parse and check a checkpoint (``resolve`` reads a version 2 checkpoint's ``parts`` table
    from its part files); every failure is one :class:`CheckpointError` line."""
    meta = _header(data, source)
    try:
        arrays = st_load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{source} is truncated or corrupt: {exc}") from None
    parts = _parts(meta, source)
    if meta["digest"] != _digest(arrays, parts):
        raise CheckpointError(f"{source} is corrupt: its tensors do not match the recorded digest")
    if parts and resolve is None:
        raise CheckpointError(f"{source} keeps {len(parts)} tensors in part files: read its state-dir")
    if parts and resolve is not None:
        stored = resolve(parts)
        if set(stored) & set(arrays):
            raise CheckpointError(f"{source} is corrupt: a tensor is both inline and a part")
        arrays.update(stored)
    names = meta["weights"]
    if not names or sorted(WEIGHTS + str(n) for n in names) != sorted(
        k for k in arrays if k.startswith(WEIGHTS)
    ):
        raise CheckpointError(f"{source} is corrupt: its weight tensors are not the {len(names)} it lists")
    weights = {str(n): arrays[WEIGHTS + str(n)] for n in names}  # in the model's order
    state = {k[len(STATE) :]: v for k, v in arrays.items() if k.startswith(STATE)}
    if len(weights) + len(state) != len(arrays):
        raise CheckpointError(f"{source} is corrupt: unexpected tensor names")
    return Checkpoint(
        step=meta["step"],
        mode=meta["mode"],
        weights=weights,
        records=tuple(_record(r, source) for r in meta["records"]),
        fingerprint=meta["fingerprint"],
        state=meta["state"],
        arrays=state,
        finished=meta["finished"],
        stopped=meta["stopped"],
        parts=frozenset(str(v[0]) for v in parts.values()),
    )


def _parts(meta: Mapping[str, Any], source: str) -> dict[str, list[str]]:
    """A version 2 checkpoint's ``parts`` table (tensor key -> [part name, tensor name]), checked."""
    parts = meta.get("parts", {})
    ok = isinstance(parts, dict) and all(
        isinstance(v, list) and len(v) == 2 and is_part_name(v[0]) and isinstance(v[1], str)
        for v in parts.values()
    )
    if not ok:
        raise CheckpointError(f"{source} is corrupt: its parts table")
    if parts and meta["version"] < 2:
        raise CheckpointError(f"{source} is corrupt: a version 1 checkpoint with parts")
    return parts


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "step": int,
    "mode": str,
    "finished": bool,
    "stopped": (str, type(None)),
    "records": list,
    "weights": list,
    "fingerprint": dict,
    "state": dict,
    "digest": str,
}


def _header(data: bytes, source: str) -> dict[str, Any]:
    """The JSON header, bounded and type-checked before anything else is read."""
    if len(data) < 8:
        raise CheckpointError(f"{source} is truncated: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise CheckpointError(
            f"{source} is truncated or corrupt: header of {n} bytes in a {len(data)}-byte file"
        )
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"][META_KEY])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{source} is not a stamen checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a stamen checkpoint (format {meta.get('format')!r})")
    if meta.get("version") not in READS:
        raise CheckpointError(
            f"{source} has checkpoint format version {meta.get('version')!r}; "
            f"this stamen reads version 1 or 2"
        )
    for key, kind in _FIELDS.items():
        if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta[key], bool)):
            raise CheckpointError(f"{source} is corrupt: field {key!r} is {meta.get(key)!r}")
    if meta["step"] < 0 or not all(isinstance(v, str) for v in meta["fingerprint"].values()):
        raise CheckpointError(f"{source} is corrupt: bad step or fingerprint")
    return meta


def _record(d: Any, source: str) -> RoundRecord:
    if not isinstance(d, dict) or set(d) != set(ROUND_KEYS):
        raise CheckpointError(
            f"{source} is corrupt: a round record has keys {sorted(d) if isinstance(d, dict) else d!r}"
        )
    try:
        return RoundRecord(**d)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} is corrupt: round record {d.get('round')!r}: {exc}") from None


# ---- files ------------------------------------------------------------------------------------


def checkpoint_path(state_dir: Path) -> Path:
    """Where the checkpoint of ``state_dir`` lives."""
    return Path(state_dir) / FILE_NAME


def read_checkpoint(state_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``state_dir`` (its parts read and checked), or None when there is none
    yet (a fresh run)."""
    from stamen.server.checkpoint_store import PartStore  # the store builds on this module

    path = checkpoint_path(state_dir)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path} is {size} bytes, more than the {MAX_FILE_BYTES} a checkpoint may have")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return decode_checkpoint(data, str(path), PartStore(Path(state_dir)).resolve)


def _write_all(fh: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``fh`` (a seam: tests make it fail half way)."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def atomic_write(directory: Path, name: str, data: bytes, sync_dir: bool = True) -> Path:
    """``directory/name`` holds ``data`` whole or is as it was: temp file in ``directory`` -> write
    -> flush -> fsync -> rename (-> fsync the directory). A failure removes the temp file."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, Path(directory) / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(Path(directory))
    return Path(directory) / name


def write_checkpoint(state_dir: Path, ck: Checkpoint, store: Any = None) -> int:
    """Write ``ck`` atomically into ``state_dir`` (created); returns the bytes written.

    ``store`` (a :class:`~stamen.server.checkpoint_store.PartStore` of ``state_dir``, one per run so
    it remembers what it hashed) takes the large arrays; a fresh one is used when None. New parts
    are durable before the manifest is renamed into place, and the parts it no longer names are
    deleted after. On any failure the temp file is removed and the old checkpoint is intact.
    """
    from stamen.server.checkpoint_store import PartStore

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    parts = PartStore(state_dir) if store is None else store
    before = parts.written
    units = {WEIGHTS: list(ck.weights), **{STATE + p: list(n) for p, n in ck.groups.items()}}
    table: dict[str, list[str]] = {}

    def split(arrays: dict[str, np.ndarray]) -> dict[str, list[str]]:
        table.update(parts.split(arrays, units))
        return table

    data = encode_checkpoint(ck, split)
    parts.sync()
    atomic_write(state_dir, FILE_NAME, data)
    parts.collect({name for name, _ in table.values()})
    return len(data) + parts.written - before


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(state_dir: Path) -> list[Path]:
    """Delete temp files a killed writer left behind (never the checkpoint itself)."""
    gone = []
    for p in Path(state_dir).glob(f"{TMP_PREFIX}*.tmp"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone
