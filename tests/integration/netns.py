"""Hosts in network namespaces: a server host and N device hosts joined by veth pairs.

Topology (all of it exists only inside namespaces this module creates)::

    <prefix>-srv   br0 10.213.0.1/24 -- v0, v1, ... (veth ends enslaved to br0)
    <prefix>-d0    eth0 10.213.0.10/24 (peer of v0)
    <prefix>-d1    eth0 10.213.0.11/24 (peer of v1)  ...

Every namespace has its own loopback up, so a process can also listen on 127.0.0.1 there without
touching the host's ports. The veth pairs are created directly inside the namespaces (never in the
host's), the addresses are a private /24 that exists only on these interfaces, and teardown ends the
processes still running in *these* namespaces and deletes exactly the names it created.

Use as a pytest fixture (``netns_hosts``, 3 device hosts by default; ``@pytest.mark.parametrize(
"netns_hosts", [5], indirect=True)`` for more) or as a context manager (:func:`network`).
It skips with the reason when not root, when ``ip`` is missing, or when namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Host", "Network", "netns_hosts", "network", "skip_reason"]

SUBNET = "10.213.0"
SERVER_ADDR = f"{SUBNET}.1"
IP_TIMEOUT_S = 10.0
MAX_DEVICES = 200


@dataclass(frozen=True)
class Host:
    """One namespace: its name and its address on the test network."""

    netns: str
    addr: str

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def run(
        self, cmd: Sequence[str], timeout: float = 60.0, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` here to completion (bounded by ``timeout`` seconds), capturing text output."""
        return subprocess.run(
            self.argv(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw
        )  # type: ignore[call-overload,no-any-return]


@dataclass
class Network:
    """The server host, the device hosts and the processes started through :meth:`start`."""

    server: Host
    devices: list[Host]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, host: Host, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``host``'s namespace (own process group), output to ``log``."""
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                host.argv(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        """SIGTERM ``proc``'s group, SIGKILL after ``timeout`` seconds; returns its exit status."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def skip_reason() -> str | None:
    """Why namespaces cannot be used here, or ``None`` when they can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"stamen-probe-{os.getpid()}-{secrets.token_hex(3)}"
    made = _ip(["netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip(["netns", "del", probe], check=False)
    return None


def _ip(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _setup(prefix: str, n_devices: int, created: list[str]) -> Network:
    server = Host(f"{prefix}-srv", SERVER_ADDR)
    _ip(["netns", "add", server.netns])
    created.append(server.netns)
    srv = ["-n", server.netns]
    _ip([*srv, "link", "set", "lo", "up"])
    _ip([*srv, "link", "add", "br0", "type", "bridge"])
    _ip([*srv, "addr", "add", f"{SERVER_ADDR}/24", "dev", "br0"])
    _ip([*srv, "link", "set", "br0", "up"])
    devices = []
    for i in range(n_devices):
        dev = Host(f"{prefix}-d{i}", f"{SUBNET}.{10 + i}")
        _ip(["netns", "add", dev.netns])
        created.append(dev.netns)
        _ip([*srv, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", dev.netns])
        _ip([*srv, "link", "set", f"v{i}", "master", "br0", "up"])
        _ip(["-n", dev.netns, "addr", "add", f"{dev.addr}/24", "dev", "eth0"])
        _ip(["-n", dev.netns, "link", "set", "eth0", "up"])
        _ip(["-n", dev.netns, "link", "set", "lo", "up"])
        devices.append(dev)
    return Network(server, devices)


def _teardown(net: Network | None, created: Sequence[str]) -> None:
    if net is not None:
        for proc in reversed(net.procs):
            net.stop(proc)
    for name in reversed(created):  # anything still running inside our namespaces is ours
        pids = _ip(["netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _ip(["netns", "pids", name], check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        _ip(["netns", "del", name], check=False)


@contextmanager
def network(n_devices: int = 3, prefix: str | None = None) -> Iterator[Network]:
    """Create the namespaces and links, yield the :class:`Network`, then tear everything down.

    Raises
    ------
    ValueError
        If ``n_devices`` is outside 1..200.
    RuntimeError
        If an ``ip`` command fails during setup (what was created so far is removed).
    """
    if not 1 <= n_devices <= MAX_DEVICES:
        raise ValueError(f"n_devices must be 1..{MAX_DEVICES}, got {n_devices}")
    prefix = prefix or f"stamen-{os.getpid()}-{secrets.token_hex(2)}"
    created: list[str] = []
    net = None
    try:
        net = _setup(prefix, n_devices, created)
        yield net
    finally:
        _teardown(net, created)


@pytest.fixture
def netns_hosts(request: pytest.FixtureRequest) -> Iterator[Network]:
    """A :class:`Network` with ``request.param`` (default 3) device hosts; skips when impossible."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with network(getattr(request, "param", 3)) as net:
        yield net
