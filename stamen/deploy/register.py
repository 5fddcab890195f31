"""The operator's side of SuperNode authentication in Flower 1.41: the ``flwr`` connection and
``flwr supernode register``.

With ``--enable-supernode-auth`` the SuperLink accepts only nodes whose public key an operator has
registered *before* the node starts (an unknown key gets "[code: 2004] Failed to activate
SuperNode" and the node exits). Registration goes over the Control API of the same TLS port::

    FLWR_HOME=OUT/operator flwr supernode register OUT/nodes/node-0/node.key.pub stamen --name node-0

``flwr`` reads connections from ``$FLWR_HOME/config.toml``; ``root-certificates`` must be an absolute
path there (relative ones are rejected by ``flwr``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "connection_toml",
    "node_register_commands",
    "register_command",
    "render_register_script",
    "run_register",
]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"SuperLink address must be HOST:PORT, got {address!r}")


def connection_toml(name: str, address: str, ca_cert: Path | None) -> str:
    """``$FLWR_HOME/config.toml`` text with one SuperLink connection, the default.

    Parameters
    ----------
    name : str
        Connection name used on the ``flwr`` command line (letters, digits, ``-`` and ``_``).
    address : str
        ``HOST:PORT`` of the SuperLink as the operator reaches it.
    ca_cert : Path or None
        The CA bundle that verifies the SuperLink (made absolute); ``None`` writes ``insecure = true``.
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"connection name must be letters, digits, '-' or '_', got {name!r}")
    _check_address(address)
    lines = ["[superlink]", f"default = {_toml_str(name)}", "", f"[superlink.{name}]"]
    lines.append(f"address = {_toml_str(address)}")
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {_toml_str(str(Path(ca_cert).resolve()))}")
    return "\n".join(lines) + "\n"


def register_command(
    public_key: Path, connection: str, name: str | None = None, flwr: str = "flwr"
) -> list[str]:
    """argv of ``flwr supernode register PUBLIC_KEY CONNECTION [--name NAME]``."""
    cmd = [flwr, "supernode", "register", str(public_key), connection]
    if name:
        cmd += ["--name", name]
    return cmd


def node_register_commands(out_dir: Path, connection: str = "stamen") -> list[list[str]]:
    """Registration argv for every ``OUT/nodes/NAME/node.key.pub``, sorted by NAME."""
    pubs = sorted(Path(out_dir).resolve().glob("nodes/*/node.key.pub"))
    return [register_command(p, connection, name=p.parent.name) for p in pubs]


def render_register_script(flwr_home: Path, commands: Sequence[Sequence[str]]) -> str:
    """A POSIX shell script that runs ``commands`` with ``FLWR_HOME`` set (one line each)."""
    lines = ["#!/bin/sh", "# register the SuperNodes' public keys with the SuperLink (run once)", "set -e"]
    lines.append(f"export FLWR_HOME={shlex.quote(str(flwr_home.resolve()))}")
    lines.append("export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1")
    lines += [shlex.join(cmd) for cmd in commands]
    return "\n".join(lines) + "\n"


def _resolve(cmd: list[str], path: str | None) -> list[str]:
    """``flwr`` from PATH, else the one installed beside this Python (a venv not on PATH)."""
    if cmd and cmd[0] == "flwr" and shutil.which("flwr", path=path) is None:
        sibling = Path(sys.executable).with_name("flwr")
        if sibling.exists():
            return [str(sibling), *cmd[1:]]
    return cmd


def run_register(
    flwr_home: Path,
    commands: Sequence[Sequence[str]],
    timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run each registration command (bounded by ``timeout_s`` each); stop at the first failure.

    Raises
    ------
    RuntimeError
        If a command exits non-zero; the message holds its last output lines.
    """
    full_env = dict(os.environ if env is None else env)
    full_env.update(FLWR_HOME=str(flwr_home.resolve()), FLWR_TELEMETRY_ENABLED="0")
    full_env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    done = []
    for cmd in commands:
        proc = subprocess.run(
            _resolve(list(cmd), full_env.get("PATH")),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: " + " | ".join(tail))
        done.append(proc)
    return done
