"""The run record a server writes: ``results.json`` and ``results.csv``, atomically.

``results.json``
    ``{"scenario": {...}, "rounds": [{round, accuracy, loss, bytes_up, bytes_down, epsilon,
    rejected, wall_s}, ...], "final": {...}}`` plus any ``extra`` top-level keys. Strict JSON:
    missing values (NaN accuracy or loss of a round without evaluation, no epsilon) are ``null``.
``results.csv``
    One row per round, header = the round keys; missing values are empty cells.

Every file is written atomically (temporary file in the same directory, then ``os.replace``).
Simulations add a plot (:func:`stamen.simulations.results.write_results`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from stamen.server.history import RoundRecord

RESERVED_KEYS = ("scenario", "rounds", "final")
"""Top-level keys of ``results.json`` that ``extra`` may not use."""


ROUND_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RoundRecord))
_REQUIRED = frozenset(f.name for f in fields(RoundRecord) if f.default is MISSING)  # others default
"""Column order of ``results.csv`` and key order of each ``results.json`` round."""


def summarize(rounds: Sequence[RoundRecord]) -> dict[str, Any]:
    """Summarize a run.

    Parameters
    ----------
    rounds : Sequence of RoundRecord
        Records in round order.

    Returns
    -------
    dict
        ``{"final": {"accuracy", "loss", "bytes_up_total", "bytes_down_total", "epsilon",
        "wall_s", "sim_time_s"}}``: accuracy, loss and epsilon of the last round that has them
        (``None`` if none has), byte totals summed over rounds, ``wall_s`` the total of the rounds'
        wall-clock seconds, and ``sim_time_s`` the simulated time of the last round that has one
        (``None`` when the engine kept no simulated clock).
    """
    rounds = _normalized(rounds)
    final = {
        "accuracy": _last(r.accuracy for r in rounds),
        "loss": _last(r.loss for r in rounds),
        "bytes_up_total": sum(r.bytes_up for r in rounds),
        "bytes_down_total": sum(r.bytes_down for r in rounds),
        "epsilon": _last(r.epsilon for r in rounds),
        "wall_s": math.fsum(r.wall_s for r in rounds),
        "sim_time_s": _last(r.sim_time_s for r in rounds),
    }
    return {"final": final}


def write_record(
    out_dir: Path,
    scenario: Mapping[str, Any],
    rounds: Sequence[RoundRecord],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json`` and ``results.csv`` into ``out_dir`` (created; files replaced).

    ``scenario`` is the settings tree; ``extra`` more top-level JSON keys (e.g. ``"engine"``), which
    may not reuse ``RESERVED_KEYS`` (``ValueError``). Returns ``{"json": ..., "csv": ...}``.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra may not use the reserved keys {clash}")
    rounds = _normalized(rounds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"scenario": scenario, "rounds": [asdict(r) for r in rounds], **summarize(rounds), **extra}
    text = json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n"
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv"}
    atomic_write(paths["json"], text.encode("utf-8"))
    atomic_write(paths["csv"], _csv_text(rounds).encode("utf-8"))
    return paths


def check_out_dir(out_dir: Path, what: str = "output directory") -> None:
    """Raise a one-line ``ValueError`` now if :func:`write_results` could not write ``out_dir``
    (``what`` names the directory in the message).

    ``out_dir`` must be a directory or not exist yet; its nearest existing ancestor must be a
    directory in which a file can be created (checked by creating and removing one, so a read-only
    file system or missing permission is found even for root). Nothing is left behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{what} {str(out_dir)!r} is an existing file")
    probe = out_dir
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {str(out_dir)!r}: {str(probe)!r} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        msg = f"{what} {str(out_dir)!r}: cannot write in {str(probe)!r} ({reason})"
        raise ValueError(msg) from None


def load_results(path: Path) -> dict[str, Any]:
    """Read ``results.json`` (``path`` may be the file or its directory); missing values are
    ``None``."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    with path.open(encoding="utf-8") as fh:
        loaded: dict[str, Any] = json.load(fh)
    return loaded


def _normalized(rounds: Sequence[Any]) -> list[RoundRecord]:
    """Accept any record with the round attributes (e.g. an engine's own record type) and
    normalize it to a :class:`RoundRecord` (plain Python numbers, checked)."""
    return [
        r
        if isinstance(r, RoundRecord)
        else RoundRecord(**{k: getattr(r, k) for k in ROUND_KEYS if hasattr(r, k) or k in _REQUIRED})
        for r in rounds
    ]


def _last(values: Any) -> float | None:
    """The last value that is neither ``None`` nor NaN."""
    out = None
    for v in values:
        if v is not None and not math.isnan(v):
            out = float(v)
    return out


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: mappings -> dicts, sequences -> lists, numpy -> Python, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _csv_text(rounds: Sequence[RoundRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ROUND_KEYS)
    for r in rounds:
        writer.writerow([_cell(getattr(r, k)) for k in ROUND_KEYS])
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
