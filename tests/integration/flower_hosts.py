"""Flower processes on namespace hosts (:mod:`netns`): a TLS + node-authenticated SuperLink on the
server host, SuperNodes on device hosts, and the operator's ``flwr`` commands.

Every wait is bounded; every process is started through :meth:`netns.Network.start`, so the
namespace teardown ends it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from netns import SERVER_ADDR, Host, Network

from stamen.deploy.init import InitOptions, InitReport, deploy_init
from stamen.deploy.register import run_register

BIN = Path(sys.executable).parent
PORT = 9093  # fixed: it is bound inside our own namespace only
LINK = f"{SERVER_ADDR}:{PORT}"


def flower_env(home: Path) -> dict[str, str]:
    """Environment for a Flower process with its own ``FLWR_HOME`` and no network side trips."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def make_keys(out: Path, nodes: int) -> InitReport:
    """``deploy init`` for the namespace network: the server cert names the server host's address."""
    return deploy_init(out, InitOptions(nodes=nodes, ips=(SERVER_ADDR, "127.0.0.1"), address=LINK))


def start_superlink(net: Network, keys: Path, tmp: Path) -> None:
    """SuperLink with TLS and SuperNode auth on the server host; returns once its port accepts."""
    certs = keys / "superlink"
    cmd = [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt")]
    cmd += ["--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key")]
    cmd += ["--enable-supernode-auth", "--disable-runtime-dependency-installation"]
    cmd += ["--database", str(tmp / "state.db"), "--host", "0.0.0.0", "--port", str(PORT)]
    proc = net.start(net.server, cmd, tmp / "superlink.log", env=flower_env(tmp / "home-link"))
    wait_until(
        lambda: _listening(net.server), 90, "the SuperLink port", proc_log=(proc, tmp / "superlink.log")
    )


def _listening(host: Host) -> bool:
    probe = host.run([sys.executable, "-m", "stamen.deploy.health", LINK], timeout=20)
    return probe.returncode == 0


def wait_until(cond, timeout_s: float, what: str, proc_log=None) -> None:  # type: ignore[no-untyped-def]
    """Poll ``cond()`` every 0.5 s for at most ``timeout_s`` seconds, else fail naming ``what``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        if proc_log is not None and proc_log[0].poll() is not None:
            raise AssertionError(f"process exited while waiting for {what}: {tail(proc_log[1])}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def tail(path: Path, n: int = 3000) -> str:
    """The last ``n`` characters of a log file."""
    return path.read_text(errors="replace")[-n:] if path.exists() else "<no log>"


def register(net: Network, keys: Path, names: Sequence[str], tmp: Path) -> None:
    """``flwr supernode register`` for ``names`` (node folders), run on the server host."""
    cmds = []
    for name in names:
        pub = keys / "nodes" / name / "node.key.pub"
        cmds.append(net.server.argv([str(BIN / "flwr"), "supernode", "register", str(pub), "stamen"]))
    run_register(keys / "operator", cmds, timeout_s=120, env=flower_env(keys / "operator"))


def supernode_cmd(
    keys: Path, name: str, index: int, total: int, *extra: str, identity: str = "", config: str = ""
) -> list[str]:
    """argv of a TLS + authenticated SuperNode using node folder ``name`` as partition ``index``,
    signing its updates with the device key of folder ``identity`` (default: its own, endorsed by its
    node key); ``config`` adds node-config entries."""
    node, signer = keys / "nodes" / name, keys / "nodes" / (identity or name)
    cmd = [str(BIN / "flower-supernode"), "--superlink", LINK, "--root-certificates", str(node / "ca.crt")]
    cmd += ["--auth-supernode-private-key", str(node / "node.key")]
    node_config = f'partition-id={index} num-partitions={total} signing-key="{signer / "device-signing.pem"}"'
    node_config += f' endorsement="{signer / "device-signing.endorsement"}" {config}'
    cmd += ["--node-config", node_config.strip(), *extra]
    return cmd


def flwr(net: Network, keys: Path, args: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run an operator ``flwr`` command on the server host; (exit status, combined output)."""
    argv = net.server.argv([str(BIN / "flwr"), *args])
    import subprocess

    run = subprocess.run(
        argv,
        env=flower_env(keys / "operator"),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return run.returncode, run.stdout + run.stderr
