"""Deployment smoke: a real SuperLink and two SuperNodes on 127.0.0.1, `flwr run .` for 2 rounds.

Every process started here is stopped by PID (its own process group) in ``finally``; every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def flower_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(tmp_path / "flwr-home"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    yield env


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


MODES = {
    "sync": "rounds=2",
    # FedAsync over the Grid: every arriving update makes a version; with both nodes in flight the
    # second arrival of a pair was computed from the version before (staleness 1)
    "fedasync": "rounds=4 server.mode=fedasync",
    # the cached downlink: each SuperNode keeps its model in context.state between rounds
    "cached": "rounds=2 clients.downlink=cached",
}


def _federation(tmp_path: Path, env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> None:
    """Phase 1: an insecure SuperLink on a free loopback port (named in ``$FLWR_HOME/config.toml``)
    and two SuperNodes for partitions 0 and 1; every process started is appended to ``procs``."""
    link = _free_port()
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    superlink = [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation"]
    superlink += ["--host", "127.0.0.1", "--port", str(link), "--database", str(tmp_path / "state.db")]
    procs.append(_start(superlink, env, tmp_path / "superlink.log"))
    _wait_port(link, 60)
    for pid in (0, 1):
        node = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}"]
        node += ["--node-config", f"partition-id={pid} num-partitions=2", "--port", str(_free_port())]
        procs.append(_start(node, env, tmp_path / f"supernode{pid}.log"))


def _check_results(res: dict[str, Any], mode: str, logs: str) -> None:
    """Phase 3: every round (or version) recorded, nothing rejected, trained, and the mode's marks."""
    versions = 4 if mode == "fedasync" else 2
    assert [r["round"] for r in res["rounds"]] == list(range(1, versions + 1)), logs
    assert all(r["rejected"] == 0 and r["bytes_up"] > 0 for r in res["rounds"])
    assert res["final"]["accuracy"] > 0.3
    assert res["engine"] == "flower-deployment"  # a SuperLink's grid, not Flower's InMemoryGrid
    if mode == "cached":  # round 1: both nodes build the initial model themselves; round 2: patches
        assert res["rounds"][0]["bytes_down"] == 0 < res["rounds"][1]["bytes_down"], res["rounds"]
    if mode == "fedasync":  # one update per version, aggregated as it arrived; some were stale
        sizes = [r["bytes_up"] for r in res["rounds"]]  # one envelope each (sender ids differ in length)
        assert max(sizes) < 1.5 * min(sizes), res["rounds"]
        assert max(r["staleness_max"] for r in res["rounds"]) >= 1, res["rounds"]


@pytest.mark.parametrize("mode", list(MODES))
def test_flwr_run_against_superlink_and_two_supernodes(
    tmp_path: Path, flower_env: dict[str, str], mode: str
) -> None:
    if shutil.which("flower-superlink", path=flower_env["PATH"]) is None:
        pytest.fail("flower-superlink is not installed in this environment")
    procs: list[subprocess.Popen[bytes]] = []
    out = tmp_path / "out"
    try:
        _federation(tmp_path, flower_env, procs)
        config = (
            f'scenario="smoke" out-dir="{out}" timeout-s=240 require-signed=false '
            f'overrides="data.num_clients=2 clients.per_round=2 {MODES[mode]}"'
        )
        run = subprocess.run(  # phase 2: the run through the SuperLink
            [str(BIN / "flwr"), "run", str(ROOT), "deploy", "--stream", "-c", config],
            env=flower_env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        logs = run.stdout[-3000:] + run.stderr[-3000:]
        assert run.returncode == 0, logs
        deadline = time.monotonic() + 60  # --stream may return just before the files land
        while not (out / "results.json").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        _check_results(json.loads((out / "results.json").read_text()), mode, logs)
    finally:
        _stop(procs)
