"""The server's state survives a crash of the SuperLink and its ServerApp (issue #11, item 4).

A TLS + node-authenticated SuperLink (state database) and three SuperNodes on namespace hosts, as in
``test_netns_federation.py``. Reference: ``flwr run deploy/app`` with ``state-dir`` runs 2 rounds
uninterrupted. Crash: the same run with another state-dir; once round 1's checkpoint exists, the
SuperLink and its ``flwr-serverapp`` subprocess (found among the SuperLink's descendants) are
SIGKILL'd; the SuperLink restarts on the same ``--database``, the SuperNodes reconnect, and the run
is submitted again: it resumes after the checkpointed round and ends with the reference's model.
(The smoke run keeps no client-side state, so the equality must hold; see docs/deployment.md,
"Restarts", for what does not resume.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from flower_hosts import (
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

from stamen.server.checkpoint import CheckpointError, read_checkpoint, records_equal

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODES = ["node-0", "node-1", "node-2"]
ROUNDS = 2  # round 2 runs after the restart, from the checkpointed round 1


def _online(net: Network, keys: Path) -> int:
    code, out = flwr(net, keys, ["supernode", "ls", "stamen", "--format", "json"], 60)
    start = out.find("{")
    if code != 0 or start < 0:
        return 0
    return [str(n.get("status")) for n in json.loads(out[start:]).get("nodes", [])].count("online")


def _config(state_dir: Path) -> str:
    n = len(NODES)
    return (
        f'scenario="smoke" state-dir="{state_dir}" timeout-s=120 '
        f'overrides="data.num_clients={n} clients.per_round={n} rounds={ROUNDS}"'
    )


def _step(state_dir: Path) -> int:
    """Rounds checkpointed so far (-1: none yet; a half-written file is not read: renames are atomic)."""
    try:
        ck = read_checkpoint(state_dir)
    except CheckpointError:
        return -1
    return -1 if ck is None else ck.step


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), children first."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _crash(link: subprocess.Popen[bytes]) -> list[str]:
    """SIGKILL the SuperLink and every process it spawned (its ServerApp); their command lines."""
    pids = [link.pid, *_descendants(link.pid)]
    names = [_cmdline(p) for p in pids]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    link.wait(timeout=30)
    return names


def test_restarted_superlink_resumes_the_run(netns_hosts: Network, tmp_path: Path) -> None:
    net, keys, t0 = netns_hosts, tmp_path / "keys", time.monotonic()
    make_keys(keys, nodes=len(NODES))
    start_superlink(net, keys, tmp_path)
    register(net, keys, NODES, tmp_path)
    for i, name in enumerate(NODES):
        cmd = supernode_cmd(keys, name, i, len(NODES))
        net.start(net.devices[i], cmd, tmp_path / f"{name}.log", env=flower_env(tmp_path / f"home-{name}"))
    wait_until(lambda: _online(net, keys) == len(NODES), 180, "every SuperNode online")
    app = str(ROOT / "deploy" / "app")

    ref = tmp_path / "state-ref"
    code, logs = flwr(net, keys, ["run", app, "stamen", "--stream", "-c", _config(ref)], 600)
    assert code == 0 and _step(ref) == ROUNDS, logs[-4000:]

    crashed = tmp_path / "state-crash"
    code, logs = flwr(net, keys, ["run", app, "stamen", "-c", _config(crashed)], 120)  # submit, no wait
    assert code == 0, logs[-4000:]
    wait_until(lambda: _step(crashed) >= 1, 300, "round 1's checkpoint")
    link = net.procs[0]
    killed = _crash(link)
    assert any("flwr-serverapp" in c for c in killed), killed  # the ServerApp died with its SuperLink
    at_crash = _step(crashed)
    assert 1 <= at_crash < ROUNDS, f"the run finished before the crash ({at_crash} rounds)"

    (tmp_path / "superlink.log").rename(tmp_path / "superlink-1.log")
    start_superlink(net, keys, tmp_path)  # same --database: registrations and nodes survive
    wait_until(lambda: _online(net, keys) == len(NODES), 240, "the SuperNodes to reconnect")
    code, logs = flwr(net, keys, ["run", app, "stamen", "--stream", "-c", _config(crashed)], 600)
    assert code == 0, logs[-4000:] + tail(tmp_path / "superlink.log")
    assert f"resuming from {crashed} after round" in logs, logs[-4000:]

    want, got = read_checkpoint(ref), read_checkpoint(crashed)
    assert want is not None and got is not None and want.finished and got.finished
    for k in want.weights:
        np.testing.assert_allclose(got.weights[k], want.weights[k], rtol=0, atol=1e-6)
    assert records_equal(got.records, want.records, skip=("wall_s", "sim_time_s"))
    print(f"restart test: crashed after round {at_crash}; wall time {time.monotonic() - t0:.1f} s")
