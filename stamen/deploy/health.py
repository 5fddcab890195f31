"""Container health check: is something accepting TCP connections on HOST:PORT? (stdlib only)

``python -m stamen.deploy.health [HOST:PORT]`` exits 0 when a TCP connection to the address opens
within the timeout, 1 otherwise. Without an argument it reads ``STAMEN_HEALTH_ADDRESS``. The images
point it at the role's own listening port (SuperLink: its HTTP port; SuperNode: its Runtime API;
SuperExec: its gRPC health server), so a hung or crashed process turns the container unhealthy.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

__all__ = ["check", "main", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); a bad value raises ``ValueError``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"health address must be HOST:PORT, got {text!r}")
    return host, int(port)


def check(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """True when a TCP connection to (host, port) opens within ``timeout_s`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 (healthy), 1 (unhealthy) or 2 (bad address)."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = args[0] if args else os.environ.get("STAMEN_HEALTH_ADDRESS", "")
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        print(f"health: {exc}", file=sys.stderr)
        return 2
    return 0 if check(host, port) else 1


if __name__ == "__main__":
    raise SystemExit(main())
