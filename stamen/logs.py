"""Structured logs: one JSON object per line, for the server and the device daemon.

    from stamen.logs import configure_json_logging, log_event
    configure_json_logging("stamen", role="server")            # once, at process start
    log_event(logging.getLogger("stamen.server"), "update_rejected", node="a1b2", reason="signature")

prints ``{"ts": "2026-01-01T12:00:00.123456+00:00", "level": "INFO", "logger": "stamen.server",
"event": "update_rejected", "msg": "update_rejected", "role": "server", "node": "a1b2",
"reason": "signature"}``. Ordinary ``log.info("text %s", x)`` calls come out as JSON too (``msg``
holds the formatted text). Values that JSON cannot hold are written with ``repr``; non-finite
floats are written as strings (JSON has no NaN).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["JsonFormatter", "configure_json_logging", "configure_logging", "log_event"]

_FIELDS = "stamen_fields"  # LogRecord attribute that carries log_event's keyword fields
_RESERVED = frozenset({"ts", "level", "logger", "msg", "event", "exc"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


class JsonFormatter(logging.Formatter):
    """Format a ``LogRecord`` as one JSON line.

    Parameters
    ----------
    static : mapping, optional
        Fields added to every line (e.g. ``{"role": "device", "node": "node-0"}``).
    """

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = {k: _jsonable(v) for k, v in (static or {}).items()}
        bad = _RESERVED & set(self.static)
        if bad:
            raise ValueError(f"static log fields may not use reserved names: {sorted(bad)}")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, _FIELDS, None)
        if fields is not None:
            out["event"] = fields["event"]
        out.update(self.static)
        if fields is not None:
            out.update({k: _jsonable(v) for k, v in fields.items() if k != "event"})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(", ", ": "))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with keyword ``fields`` (JSON values under their own keys).

    Raises
    ------
    ValueError
        If ``event`` is empty or a field name is reserved (ts, level, logger, msg, event, exc).
    """
    if not event:
        raise ValueError("event name must not be empty")
    bad = _RESERVED & set(fields)
    if bad:
        raise ValueError(f"log fields may not use reserved names: {sorted(bad)}")
    logger.log(level, "%s", event, extra={_FIELDS: {"event": event, **fields}})


def configure_json_logging(
    logger: str = "stamen",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    **static: Any,
) -> logging.Handler:
    """Send ``logger``'s records (and its children's) to ``stream`` as JSON lines.

    Replaces a handler this function installed before on the same logger (calling it twice does not
    double the lines) and stops propagation to the root logger, so Flower's own console handler
    does not print the same record again as text.

    Parameters
    ----------
    logger : str
        Logger name (default ``stamen``: every ``stamen.*`` logger).
    level : int or str
        Threshold, e.g. ``logging.INFO`` or ``"DEBUG"``.
    stream : text stream, optional
        Where lines go (default ``sys.stderr``).
    **static
        Fields on every line, e.g. ``role="server"``.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    handler.set_name("stamen-json")
    target = logging.getLogger(logger)
    for old in [h for h in target.handlers if h.get_name() == "stamen-json"]:
        target.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = False
    return handler


def configure_logging(role: str, logger: str = "stamen") -> logging.Handler:
    """The process's ``stamen`` log lines: JSON (:func:`configure_json_logging`) when
    ``STAMEN_LOG_FORMAT=json``, else one text line per record; level from ``STAMEN_LOG_LEVEL``
    (default INFO). Idempotent; ``ValueError`` names a bad format or level."""
    fmt = os.environ.get("STAMEN_LOG_FORMAT", "text").strip().lower()
    level = os.environ.get("STAMEN_LOG_LEVEL", "INFO").strip().upper()
    if fmt not in ("text", "json"):
        raise ValueError(f"STAMEN_LOG_FORMAT must be text or json, got {fmt!r}")
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"STAMEN_LOG_LEVEL must be a logging level name, got {level!r}")
    if fmt == "json":
        return configure_json_logging(logger, level, role=role)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.set_name("stamen-json")  # replaced like the JSON handler on a second call
    target = logging.getLogger(logger)
    for old in [h for h in target.handlers if h.get_name() == "stamen-json"]:
        target.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = False
    return handler
