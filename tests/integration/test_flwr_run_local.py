"""`flwr run . local` (Flower 1.41's local SuperLink with the simulation runtime) records
``engine = "flower-simulation"`` in results.json (issue 14, drift), and trains.

The local SuperLink listens on fixed ports (39091, 39093), so it runs in a network namespace of its
own (nothing on the host's ports); Ray gets its own temp dir so it starts a fresh local instance
instead of joining a cluster another process left in ``/tmp/ray/ray_current_cluster``. The SuperLink
is started here (as ``flwr`` would), because ``flwr``'s own start gives up after 15 s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from netns import Network

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONTROL = "127.0.0.1:39093"  # the address `flwr run . local` looks for (flwr.cli.local_superlink)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(tmp_path / "flwr-home"),
        RAY_TMPDIR=str(tmp_path / "ray"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    (tmp_path / "ray").mkdir()
    return env


def _wait_control(net: Network, timeout: float) -> None:
    probe = "import socket; socket.create_connection(('127.0.0.1', 39093), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if net.server.run([sys.executable, "-c", probe], timeout=30).returncode == 0:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the local SuperLink's Control API is not up on {CONTROL} after {timeout} s")


@pytest.mark.parametrize("netns_hosts", [1], indirect=True)
def test_flwr_run_local_records_the_simulation_engine(netns_hosts: Network, tmp_path: Path) -> None:
    net, env, out = netns_hosts, _env(tmp_path), tmp_path / "out"
    link = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess"]
    link += ["--control-api-address", CONTROL, "--host", "127.0.0.1", "--port", "39091"]
    link += ["--database", str(tmp_path / "state.db")]
    net.start(net.server, link, tmp_path / "superlink.log", env=env)
    _wait_control(net, 180)
    config = f'out-dir="{out}" overrides="rounds=1 data.num_clients=2 clients.per_round=2"'
    cmd = [str(BIN / "flwr"), "run", str(ROOT), "local", "--stream", "-c", config]
    cmd += ["--federation-config", "num-supernodes=2"]
    run = net.server.run(cmd, timeout=480, env=env)
    logs = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, logs
    deadline = time.monotonic() + 60  # --stream may return just before the files land
    while not (out / "results.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    res = json.loads((out / "results.json").read_text())
    assert res["engine"] == "flower-simulation", logs
    assert [r["round"] for r in res["rounds"]] == [1] and res["rounds"][0]["rejected"] == 0, logs
