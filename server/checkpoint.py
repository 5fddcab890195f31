"""The stamen server's own checkpoint: one file holding everything a run needs to resume.

Format (version 1): one safetensors file, ``<state-dir>/checkpoint.safetensors``.

- tensors ``w/<name>``: the global weights after the last completed round (float32);
  tensors ``s/<key>``: the arrays of the run's state parts (model history, FedBuff buffer, rule
  state, client states of a simulation, ...), named by the part that wrote them;
- the safetensors metadata key ``stamen.checkpoint`` holds one JSON object: ``format``,
  ``version``, ``step`` (completed rounds, or model versions in the asynchronous modes), ``mode``,
  ``finished``, ``stopped``, ``weights`` (the tensor names in the model's order), ``records``
  (the :class:`~stamen.server.history.RoundRecord` list so far), ``fingerprint`` (the run
  configuration, see :func:`fingerprint`), ``state`` (the parts' JSON trees), ``stamen`` (the
  version that wrote it) and ``digest`` (SHA-256 over every tensor's name, dtype, shape and bytes,
  so a flipped bit is found, not only a truncation).

Nothing is unpickled: the header is length-checked (:data:`MAX_HEADER_BYTES`) before it is parsed,
the file size is bounded (:data:`MAX_FILE_BYTES`), and every failure to read is one
:class:`CheckpointError` line naming the file and the reason.

Writing (:func:`write_checkpoint`) is atomic: a temporary file in the same directory, written,
flushed and fsync'd, then renamed over the previous checkpoint, then the directory fsync'd. The
previous checkpoint stays whole until the rename: a crash at any point leaves either the old or the
new file, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from stamen._version import __version__
from stamen.protocols import StamenError
from stamen.server.history import RoundRecord
from stamen.server.records import ROUND_KEYS

FORMAT = "stamen-checkpoint"
VERSION = 1
FILE_NAME = "checkpoint.safetensors"
META_KEY = "stamen.checkpoint"
TMP_PREFIX = ".checkpoint."
MAX_HEADER_BYTES = 64 * 2**20  # the JSON header (records, fingerprint, state trees)
MAX_FILE_BYTES = 64 * 2**30  # a whole checkpoint; a larger file is refused unread
WEIGHTS, STATE = "w/", "s/"

Weights = dict[str, np.ndarray]


class CheckpointError(StamenError):
    """A checkpoint cannot be read, does not belong to this run, or cannot be used to resume."""


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


def fingerprint(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a settings tree into ``{"section.key": canonical JSON of the value}``.

    Two runs have the same configuration exactly when their fingerprints are equal; the keys that
    differ are what :func:`check_fingerprint` names.
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(fingerprint(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def fingerprint_diff(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The keys whose values differ (or that only one side has), sorted."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


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


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def encode_checkpoint(ck: Checkpoint) -> bytes:
    """The checkpoint's bytes (see the module docstring for the layout)."""
    arrays: dict[str, np.ndarray] = {WEIGHTS + k: np.asarray(v, np.float32) for k, v in ck.weights.items()}
    arrays.update({STATE + k: np.asarray(v) for k, v in ck.arrays.items()})
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "stamen": __version__,
        "step": int(ck.step),
        "mode": ck.mode,
        "finished": bool(ck.finished),
        "stopped": ck.stopped,
        "records": [_record_json(r) for r in ck.records],
        "weights": list(ck.weights),
        "fingerprint": dict(ck.fingerprint),
        "state": ck.state,
        "digest": _digest(arrays),
    }
    return bytes(st_save(arrays, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))


def _record_json(rec: RoundRecord) -> dict[str, Any]:
    # NaN/inf travel as JSON's NaN/Infinity tokens (json.loads reads them back)
    return {k: getattr(rec, k) for k in ROUND_KEYS}


def decode_checkpoint(data: bytes, source: str = "checkpoint") -> Checkpoint:
    """Parse and check a checkpoint; every failure is one :class:`CheckpointError` line."""
    meta = _header(data, source)
    try:
        arrays = st_load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{source} is truncated or corrupt: {exc}") from None
    if meta["digest"] != _digest(arrays):
        raise CheckpointError(f"{source} is corrupt: its tensors do not match the recorded digest")
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
    )


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
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format version {meta.get('version')!r}; "
            f"this stamen reads version {VERSION}"
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
    """The checkpoint in ``state_dir``, or None when there is none yet (a fresh run)."""
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
    return decode_checkpoint(data, str(path))


def _write_all(fh: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``fh`` (a seam: tests make it fail half way)."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def write_checkpoint(state_dir: Path, ck: Checkpoint) -> Path:
    """Write ``ck`` atomically into ``state_dir`` (created); returns the checkpoint's path.

    temp file in ``state_dir`` -> write -> flush -> fsync -> rename over the old checkpoint ->
    fsync the directory. On any failure the temp file is removed and the old checkpoint is intact.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    data = encode_checkpoint(ck)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, checkpoint_path(state_dir))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(state_dir)
    return checkpoint_path(state_dir)


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


def records_equal(
    a: Sequence[RoundRecord], b: Sequence[RoundRecord], skip: Sequence[str] = ("wall_s",)
) -> bool:
    """Whether two record lists agree on every field but ``skip`` (NaN equals NaN)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        for k in ROUND_KEYS:
            if k in skip:
                continue
            x, y = getattr(ra, k), getattr(rb, k)
            both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
            if x != y and not both_nan:
                return False
    return True
