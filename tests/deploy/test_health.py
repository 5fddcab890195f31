"""The containers' TCP health check."""

from __future__ import annotations

import socket

import pytest

from stamen.deploy.health import main, parse_address


def test_healthy_when_listening_unhealthy_when_not() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        assert main([f"127.0.0.1:{port}"]) == 0
    assert main([f"127.0.0.1:{port}"]) == 1  # closed now


def test_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAMEN_HEALTH_ADDRESS", "nonsense")
    assert main([]) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("superlink:9093", ("superlink", 9093)), ("[::1]:9094", ("::1", 9094))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9093", "host:", "host:0", "host:65536", ":80"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)
