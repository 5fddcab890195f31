"""A two-node Ray cluster on this machine runs a Flower simulation with clients on both nodes.

The recipe of docs/scale.md, on loopback: ``ray start --head --block`` and ``ray start
--address=<head> --block`` as two separate process trees (one CPU each, every port chosen free, their
own ``--temp-dir`` so no other Ray user on the machine finds this cluster), then a driver process
runs ``flwr.simulation.run_simulation`` with ``backend_config["init_args"]["address"]`` pointing at
the head. Flower's Ray backend passes ``init_args`` to ``ray.init`` and sizes its actor pool over
every node (``pool_size_from_resources``), so with ``num_cpus = 1`` per client there is one actor per
node. The trivial ClientApp replies with its Ray node id; the test requires both node ids.

Each ``ray start`` runs in its own session; teardown signals exactly those process groups (never
``ray stop``, which would stop every Ray process of the machine). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]
SUPERNODES, MAX_ROUNDS, HANDLER_SLEEP_S = 6, 8, 0.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_ports() -> list[str]:
    """Every port a Ray node opens, chosen free (the defaults are fixed and shared machine-wide)."""
    names = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc")
    names += ("metrics-export", "runtime-env-agent")
    return [f"--{n}-port={_free_port()}" for n in names]


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000"]
    cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *common, *_node_ports(), *args]
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"ray start exited with {proc.returncode} before listening: {tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head does not listen on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this test started, then SIGKILL what is left of it."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + grace
        while time.monotonic() < end:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()  # reap the leader so the group can empty
            time.sleep(0.2)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Ray's session files: its socket paths must fit AF_UNIX's 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="stray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ray_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        FLWR_HOME=str(tmp_path / "flwr-home"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    yield env


def test_clients_run_on_both_ray_nodes(tmp_path: Path, short_dir: Path, ray_env: dict[str, str]) -> None:
    gcs = _free_port()
    address = f"127.0.0.1:{gcs}"
    extra = [f"--ray-client-server-port={_free_port()}", "--include-dashboard=false"]
    head = _ray_start(
        ["--head", f"--port={gcs}", f"--temp-dir={short_dir / 'head'}", *extra],
        ray_env,
        tmp_path / "head.log",
    )
    started = [head]
    try:
        _wait_port(gcs, head, tmp_path / "head.log", timeout=120)
        worker_dir = f"--temp-dir={short_dir / 'worker'}"
        started.append(_ray_start([f"--address={address}", worker_dir], ray_env, tmp_path / "worker.log"))
        out = tmp_path / "placement.json"
        driver = [sys.executable, __file__, address, str(out)]
        done = subprocess.run(driver, env=ray_env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result = json.loads(out.read_text())
    finally:
        for proc in reversed(started):
            _stop(proc)
    assert len(result["cluster"]) == 2, result  # head + worker, both alive
    assert set(result["seen"]) == set(result["cluster"]), result  # replies came from both nodes
    assert sum(result["seen"].values()) == SUPERNODES * result["rounds"] and not result["errors"]


def _drive(address: str, out: Path) -> None:
    """Driver process: wait for both nodes, run the Flower simulation on the cluster, write placement."""
    import ray
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    end = time.monotonic() + 120
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < end:
        time.sleep(0.5)
    ray.shutdown()  # Flower connects again itself, from backend_config["init_args"]

    client = ClientApp()

    @client.query()
    def where(msg: Message, context: Context) -> Message:
        time.sleep(HANDLER_SLEEP_S)  # keep one actor busy so the other takes messages too
        node = ray.get_runtime_context().get_node_id()
        return Message(
            RecordDict({"where": ConfigRecord({"ray-node": node, "pid": os.getpid()})}), reply_to=msg
        )

    result: dict = {"seen": {}, "errors": [], "rounds": 0}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        ids: list[int] = []
        deadline = time.monotonic() + 60
        while len(ids) < SUPERNODES and time.monotonic() < deadline:
            ids = sorted(grid.get_node_ids())
            time.sleep(0.1)
        for rnd in range(1, MAX_ROUNDS + 1):
            msgs = [
                Message(RecordDict(), dst_node_id=i, message_type="query", group_id=str(rnd)) for i in ids
            ]
            for reply in grid.send_and_receive(msgs, timeout=120):
                if reply.has_error():
                    result["errors"].append(str(reply.error.reason))
                else:
                    node = str(reply.content["where"]["ray-node"])
                    result["seen"][node] = result["seen"].get(node, 0) + 1
            result["rounds"] = rnd
            if len(result["seen"]) >= 2:
                break
        result["cluster"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"address": address, "logging_level": "ERROR", "log_to_driver": False},
    }
    run_simulation(server_app=server, client_app=client, num_supernodes=SUPERNODES, backend_config=backend)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    _drive(sys.argv[1], Path(sys.argv[2]))
