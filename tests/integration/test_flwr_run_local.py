"""`flwr run . local` (Flower 1.41's local SuperLink with the simulation runtime) records
``engine = "flower-simulation"`` in results.json (issue 14, drift), and trains.

The local SuperLink's HTTP port is fixed (39091) unless ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` names
another, so the test gives it a free one; Ray gets its own temp dir, so it starts a fresh local
instance instead of joining a cluster another process left in ``/tmp/ray/ray_current_cluster``. The
SuperLink is started here (with the flags ``flwr`` uses), because ``flwr``'s own start gives up after
15 s on a loaded machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, port: int, ray_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(tmp_path / "flwr-home"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
        RAY_TMPDIR=str(ray_dir),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"the local SuperLink is not healthy on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def local_superlink(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A simulation SuperLink on a free port, as ``flwr run . local`` starts one; its environment."""
    port = _free_port()
    ray_dir = Path(tempfile.mkdtemp(prefix="stamen-ray-", dir="/tmp"))  # Ray's socket paths: < 108 bytes
    env = _env(tmp_path, port, ray_dir)
    cmd = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--database", str(tmp_path / "state.db")]
    with (tmp_path / "superlink.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(port, proc, 180)
        yield env
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_flwr_run_local_records_the_simulation_engine(
    local_superlink: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = f'out-dir="{out}" overrides="rounds=1 data.num_clients=2 clients.per_round=2"'
    cmd = [str(BIN / "flwr"), "run", str(ROOT), "local", "--stream", "-c", config]
    cmd += ["--federation-config", "num-supernodes=2"]
    run = subprocess.run(cmd, env=local_superlink, capture_output=True, text=True, timeout=480, check=False)
    logs = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, logs
    deadline = time.monotonic() + 60  # --stream may return just before the files land
    while not (out / "results.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (out / "results.json").exists(), logs
    res = json.loads((out / "results.json").read_text())
    assert res["engine"] == "flower-simulation", logs
    assert [r["round"] for r in res["rounds"]] == [1] and res["rounds"][0]["rejected"] == 0, logs
