"""The compose federation: SuperLink (TLS, node auth, state volume), the ServerApp's execution
(SuperExec) and two device containers, run to completion with ``flwr run`` from the host.

Needs a docker engine, compose and the images (``make images``); skips with the reason otherwise,
and fails instead when ``STAMEN_REQUIRE_CONTAINERS=1`` (``.ci/run`` sets it after building them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from containers import ROOT, compose_cmd

from stamen.deploy.init import InitOptions, deploy_init
from stamen.deploy.register import node_register_commands, run_register

pytestmark = [pytest.mark.integration, pytest.mark.slow]
COMPOSE_FILE = ROOT / "deploy" / "compose.yml"
BIN = Path(sys.executable).parent
TAG = os.environ.get("STAMEN_TAG", "latest")  # the same default as docker_env (conftest)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _compose(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [*compose_cmd(env), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _health(env: dict[str, str], service: str) -> str:
    cid = _compose(env, "ps", "-q", service, timeout=60).stdout.strip()
    fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    got = subprocess.run(
        ["docker", "inspect", "-f", fmt, cid], env=env, capture_output=True, text=True, timeout=60
    )
    return got.stdout.strip()


def _wait(cond, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _flwr(
    env: dict[str, str], keys: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full = {**env, "FLWR_HOME": str(keys / "operator"), "FLWR_TELEMETRY_ENABLED": "0"}
    full["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=full, capture_output=True, text=True, timeout=timeout
    )


def _online(env: dict[str, str], keys: Path) -> int:
    out = _flwr(env, keys, "supernode", "ls", "stamen", "--format", "json").stdout
    start = out.find("{")
    nodes = json.loads(out[start:]).get("nodes", []) if start >= 0 else []
    return sum(n.get("status") == "online" for n in nodes)


def _run_federation(env: dict[str, str], keys: Path, tmp: Path) -> dict[str, object]:
    assert _compose(env, "up", "-d", "superlink").returncode == 0
    _wait(lambda: _health(env, "superlink") == "healthy", 180, "a healthy superlink")
    run_register(
        keys / "operator",
        node_register_commands(keys),
        timeout_s=120,
        env={**env, "PATH": f"{BIN}:{env['PATH']}"},
    )
    up = _compose(env, "up", "-d")
    assert up.returncode == 0, up.stderr
    _wait(lambda: _online(env, keys) == 2, 240, "2 device containers online")
    config = (
        'out-dir="/app/results" timeout-s=300 overrides="data.num_clients=2 clients.per_round=2 rounds=2"'
    )
    run = _flwr(
        env, keys, "run", str(ROOT / "deploy" / "app"), "stamen", "--stream", "-c", config, timeout=600
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    cid = _compose(env, "ps", "-q", "server").stdout.strip()
    _wait(
        lambda: (
            subprocess.run(
                ["docker", "cp", f"{cid}:/app/results/results.json", str(tmp)],
                env=env,
                capture_output=True,
                timeout=60,
            ).returncode
            == 0
        ),
        120,
        "results.json in the server container",
    )
    return json.loads((tmp / "results.json").read_text())


def test_compose_federation_with_tls_and_node_auth(docker_env: dict[str, str], tmp_path: Path) -> None:
    t0 = time.monotonic()
    port = _free_port()
    keys = tmp_path / "keys"
    deploy_init(keys, InitOptions(nodes=2, owner=(49999, 49999), address=f"127.0.0.1:{port}"))
    env = {
        **docker_env,
        "STAMEN_KEYS": str(keys),
        "STAMEN_SUPERLINK_PORT": str(port),
        "STAMEN_TAG": TAG,
        "COMPOSE_PROJECT_NAME": f"stamentest{os.getpid()}",
    }
    try:
        res = _run_federation(env, keys, tmp_path)
    except BaseException:
        print(_compose(env, "logs", "--no-color", "--tail", "60", timeout=120).stdout[-8000:])
        raise
    finally:
        _compose(env, "down", "-v", "--timeout", "20", timeout=300)
    rounds = res["rounds"]
    assert isinstance(rounds, list) and [r["round"] for r in rounds] == [1, 2]
    assert all(r["rejected"] == 0 and r["bytes_up"] > 0 for r in rounds), rounds
    assert res["final"]["accuracy"] > 0.3  # type: ignore[index]
    print(f"container federation wall time: {time.monotonic() - t0:.1f} s")
