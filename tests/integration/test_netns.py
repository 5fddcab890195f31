"""The namespace harness itself: hosts reach the server, the addresses exist only inside, and
teardown removes exactly what it made."""

from __future__ import annotations

import subprocess
import sys

import pytest
from netns import SERVER_ADDR, network, skip_reason

pytestmark = pytest.mark.integration
LISTEN = (
    "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind((sys.argv[1], 7000)); s.listen(8); s.settimeout(30)\n"
    "for _ in range(int(sys.argv[2])): c,_=s.accept(); c.sendall(b'hi'); c.close()"
)
CONNECT = (
    "import socket,sys; c=socket.create_connection((sys.argv[1], 7000), timeout=10); "
    "print(c.recv(2).decode())"
)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_devices_reach_the_server_and_teardown_is_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    before = _netns_names()
    with network(2) as net:
        names = {net.server.netns, *(d.netns for d in net.devices)}
        assert names.isdisjoint(before) and names <= _netns_names()
        server = net.start(net.server, [sys.executable, "-c", LISTEN, SERVER_ADDR, "2"], tmp_path / "srv.log")
        for dev in net.devices:
            for _ in range(50):  # the listener may not be up yet: bounded retries
                got = dev.run([sys.executable, "-c", CONNECT, SERVER_ADDR], timeout=20)
                if got.returncode == 0:
                    break
            assert got.stdout.strip() == "hi", got.stderr
        assert server.wait(timeout=30) == 0
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
        assert SERVER_ADDR not in host  # the test network exists only inside the namespaces
        unreachable = net.devices[0].run([sys.executable, "-c", CONNECT, "10.213.0.99"], timeout=30)
        assert unreachable.returncode != 0
    assert _netns_names() == before


def test_device_count_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"n_devices must be 1\.\.200, got 0"), network(0):
        pass
