"""A TLS + node-authenticated Flower federation of the stamen apps across network namespaces.

Server host: ``flower-superlink`` (TLS, ``--enable-supernode-auth``, state database) and the
operator's ``flwr``. Three device hosts: one honest SuperNode each with its own registered ECDSA key
and endorsed update key, and three registered hostile SuperNodes beside them. Made by ``stamen deploy
init``; the app submitted is ``deploy/app`` with the test's ClientApp (stamen's, with hostile modes:
``hostile/hostile_app.py``). Checked: the run completes with the honest updates; a node whose key was
never registered is refused; a plaintext (``--insecure``) node is refused; a registered node signing
with another node's key, replaying its old update or claiming a future model version is refused every
round and counted by reason.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from flower_hosts import (
    BIN,
    LINK,
    flower_env,
    flwr,
    make_keys,
    register,
    start_superlink,
    supernode_cmd,
    tail,
    wait_until,
)
from netns import Network

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
# (node folder, supernode_cmd options): three honest devices, then three registered hostile ones
NODES = [
    ("node-0", {}),
    ("node-1", {}),
    ("node-2", {}),
    ("node-3", {"identity": "node-0"}),  # signs with node-0's device key and endorsement
    ("node-4", {"config": 'hostile="replay"'}),
    ("node-5", {"config": 'hostile="future"'}),
]
REFUSAL_S = 120.0  # how long a refused node may take to give up (it retries with backoff)


def _online(net: Network, keys: Path) -> list[str]:
    code, out = flwr(net, keys, ["supernode", "ls", "stamen", "--format", "json"], 60)
    if code != 0:
        return []
    start = out.find("{")
    nodes = json.loads(out[start:]).get("nodes", []) if start >= 0 else []
    return [str(n.get("status")) for n in nodes]


def _refused(net: Network, keys: Path, tmp: Path, stranger: str) -> None:
    """An unregistered key and a plaintext client both fail to join (bounded waits)."""
    env = flower_env(tmp / "home-refused")
    stranger_cmd = supernode_cmd(keys, stranger, 0, 1, "--port", "9094")
    stranger = net.start(net.devices[0], stranger_cmd, tmp / "stranger.log", env=env)
    # plaintext towards the TLS port, without a node key (Flower refuses a key over plaintext itself)
    plain = [str(BIN / "flower-supernode"), "--insecure", "--superlink", LINK, "--port", "9095"]
    plain += ["--max-retries", "2", "--max-wait-time", "30"]
    plaintext = net.start(net.devices[1], plain, tmp / "plaintext.log", env=env)
    for proc, log in ((stranger, tmp / "stranger.log"), (plaintext, tmp / "plaintext.log")):
        wait_until(lambda p=proc: p.poll() is not None, REFUSAL_S, f"{log.name} to be refused")
        assert proc.returncode != 0, tail(log)
    assert "Failed to activate SuperNode" in tail(tmp / "stranger.log", 20000), tail(tmp / "stranger.log")
    # the TLS port answers plaintext HTTP with nothing: "Server disconnected without sending a response"
    assert "Failed to initialize the connection" in tail(tmp / "plaintext.log", 20000), tail(
        tmp / "plaintext.log"
    )


def _hostile_fab(tmp: Path) -> Path:
    """``deploy/app`` with the test's ClientApp (stamen's, plus the hostile modes of some nodes)."""
    fab = tmp / "hostile-fab"
    fab.mkdir()
    conf = (ROOT / "deploy" / "app" / "pyproject.toml").read_text()
    conf = conf.replace('clientapp = "stamen.client.app:app"', 'clientapp = "hostile_app:app"')
    (fab / "pyproject.toml").write_text(conf.replace('name = "stamen-deployment"', 'name = "stamen-hostile"'))
    shutil.copy(HERE / "hostile" / "hostile_app.py", fab / "hostile_app.py")
    return fab


def _start_nodes(net: Network, keys: Path, tmp: Path) -> None:
    """Honest node-0..2 (one per device host) and three hostile registered nodes beside them."""
    for i, (name, kwargs) in enumerate(NODES):
        dev = net.devices[i % len(net.devices)]
        port = ["--port", str(9095 + i)] if i >= len(net.devices) else []
        cmd = supernode_cmd(keys, name, i, len(NODES), *port, **kwargs)
        net.start(dev, cmd, tmp / f"{name}.log", env=flower_env(tmp / f"home-{name}"))


def _rejections(logs: str) -> dict[int, dict[str, int]]:
    """Round -> rejection counts by reason, from the ServerApp's per-round log lines."""
    found = re.findall(r"stamen round (\d+): .*?'rejections': (\{[^}]*\})", logs)
    return {int(r): ast.literal_eval(counts) for r, counts in found}


def test_tls_authenticated_federation_across_namespaces(netns_hosts: Network, tmp_path: Path) -> None:
    net, keys, t0 = netns_hosts, tmp_path / "keys", time.monotonic()
    make_keys(keys, nodes=len(NODES) + 1)  # the last node folder is never registered
    start_superlink(net, keys, tmp_path)
    register(net, keys, [name for name, _ in NODES], tmp_path)
    _refused(net, keys, tmp_path, stranger=f"node-{len(NODES)}")
    _start_nodes(net, keys, tmp_path)
    wait_until(lambda: _online(net, keys).count("online") == len(NODES), 180, "every SuperNode online")
    out, n = tmp_path / "out", len(NODES)
    config = (
        f'scenario="smoke" out-dir="{out}" timeout-s=300 '
        f'overrides="data.num_clients={n} clients.per_round={n} rounds=3"'
    )
    code, logs = flwr(
        net, keys, ["run", str(_hostile_fab(tmp_path)), "stamen", "--stream", "-c", config], 600
    )
    assert code == 0, logs[-4000:]
    wait_until(lambda: (out / "results.json").exists(), 60, "results.json")
    res = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3], logs[-3000:]
    # round 1: the replayer is still honest; then it replays round 1's update (another base model)
    assert [r["rejected"] for r in res["rounds"]] == [2, 3, 3], logs[-3000:]
    first, later = {"signature": 1, "version": 1}, {"signature": 1, "version": 1, "base_model": 1}
    assert _rejections(logs) == {1: first, 2: later, 3: later}, logs[-3000:]
    assert res["final"]["accuracy"] > 0.3
    assert _online(net, keys).count("online") == n  # the refused nodes never joined
    print(f"namespace federation wall time: {time.monotonic() - t0:.1f} s")
