"""JSON-lines logging for the server and the device daemon."""

from __future__ import annotations

import io
import json
import logging

import pytest

from stamen.logs import JsonFormatter, configure_json_logging, log_event


@pytest.fixture
def stream() -> io.StringIO:
    buf = io.StringIO()
    configure_json_logging("stamen.test_logs", stream=buf, role="server")
    return buf


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_event_fields_and_static_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("stamen.test_logs.round")
    log_event(log, "update_rejected", node="a1b2", reason="signature", bytes=12, eps=float("inf"))
    (line,) = _lines(stream)
    assert {
        k: line[k] for k in ("level", "logger", "event", "msg", "role", "node", "reason", "bytes", "eps")
    } == {
        "level": "INFO",
        "logger": "stamen.test_logs.round",
        "event": "update_rejected",
        "msg": "update_rejected",
        "role": "server",
        "node": "a1b2",
        "reason": "signature",
        "bytes": 12,
        "eps": "inf",
    }
    assert str(line["ts"]).endswith("+00:00")


def test_plain_records_and_exceptions_are_json_too(stream: io.StringIO) -> None:
    log = logging.getLogger("stamen.test_logs")
    log.warning("round %d took %.1f s", 3, 2.5)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = _lines(stream)
    assert first["msg"] == "round 3 took 2.5 s" and "event" not in first
    assert second["level"] == "ERROR" and "RuntimeError: boom" in str(second["exc"])


def test_configuring_twice_does_not_double_lines() -> None:
    buf = io.StringIO()
    configure_json_logging("stamen.test_logs2", stream=io.StringIO())
    configure_json_logging("stamen.test_logs2", stream=buf)
    logging.getLogger("stamen.test_logs2").info("once")
    assert len(buf.getvalue().splitlines()) == 1


def test_reserved_names_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        log_event(logging.getLogger("stamen.test_logs"), "x", ts="now")
    with pytest.raises(ValueError, match="reserved"):
        JsonFormatter({"level": "x"})
    with pytest.raises(ValueError, match="empty"):
        log_event(logging.getLogger("stamen.test_logs"), "")
