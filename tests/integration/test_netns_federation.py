"""A TLS + node-authenticated Flower federation of the stamen apps across network namespaces.

Server host: ``flower-superlink`` (TLS, ``--enable-supernode-auth``, state database) and the
operator's ``flwr``. Three device hosts: one SuperNode each with its own registered ECDSA key. Made by
``stamen deploy init``; the app submitted is ``deploy/app`` (configuration only, code from the
installed stamen). Checked: the run completes; a node whose key was never registered is refused; a
plaintext (``--insecure``) node is refused.
"""

from __future__ import annotations

import json
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
N = 3
REFUSAL_S = 120.0  # how long a refused node may take to give up (it retries with backoff)


def _online(net: Network, keys: Path) -> list[str]:
    code, out = flwr(net, keys, ["supernode", "ls", "stamen", "--format", "json"], 60)
    if code != 0:
        return []
    start = out.find("{")
    nodes = json.loads(out[start:]).get("nodes", []) if start >= 0 else []
    return [str(n.get("status")) for n in nodes]


def _refused(net: Network, keys: Path, tmp: Path) -> None:
    """An unregistered key and a plaintext client both fail to join (bounded waits)."""
    env = flower_env(tmp / "home-refused")
    stranger_cmd = supernode_cmd(keys, "node-3", 0, N, "--port", "9095")
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


def test_tls_authenticated_federation_across_namespaces(netns_hosts: Network, tmp_path: Path) -> None:
    net, keys, t0 = netns_hosts, tmp_path / "keys", time.monotonic()
    make_keys(keys, nodes=N + 1)  # node-3 is never registered
    start_superlink(net, keys, tmp_path)
    register(net, keys, [f"node-{i}" for i in range(N)], tmp_path)
    _refused(net, keys, tmp_path)
    for i, dev in enumerate(net.devices):
        env = flower_env(tmp_path / f"home-node{i}")
        net.start(dev, supernode_cmd(keys, f"node-{i}", i, N), tmp_path / f"node{i}.log", env=env)
    wait_until(lambda: _online(net, keys).count("online") == N, 120, f"{N} SuperNodes online")
    out = tmp_path / "out"
    config = (
        f'scenario="smoke" out-dir="{out}" timeout-s=300 '
        f'overrides="data.num_clients={N} clients.per_round={N} rounds=2"'
    )
    code, logs = flwr(
        net, keys, ["run", str(ROOT / "deploy" / "app"), "stamen", "--stream", "-c", config], 420
    )
    assert code == 0, logs[-4000:]
    wait_until(lambda: (out / "results.json").exists(), 60, "results.json")
    res = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [1, 2], logs[-3000:]
    assert all(r["rejected"] == 0 and r["bytes_up"] > 0 for r in res["rounds"])
    assert res["final"]["accuracy"] > 0.3
    assert _online(net, keys).count("online") == N  # the refused nodes never joined
    print(f"namespace federation wall time: {time.monotonic() - t0:.1f} s")
