"""Ctrl-C / SIGTERM end a simulation after the finished rounds, with no process left behind (#14.1)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stamen.simulations.engines.interrupt import StoppableGrid, sigterm_as_interrupt, stop_on_signals


def _marked(mark: str) -> set[int]:
    """Live processes whose environment holds ``STAMEN_TEST_MARK=<mark>``: the test's run and every
    process it started, even those re-parented after it exited (Linux ``/proc``; no psutil)."""
    needle = f"STAMEN_TEST_MARK={mark}".encode()
    found = set()
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in env.read_bytes().split(b"\0") and b"Z" not in _state(env.parent):
                found.add(int(env.parent.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _state(proc: Path) -> bytes:
    return (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]


class _FakeGrid:
    """Replies to the first message on the second poll; never to the others."""

    def __init__(self) -> None:
        self.polls = 0
        self.pushed: list[str] = []

    def push_messages(self, messages: list[str]) -> list[str]:
        self.pushed = list(messages)
        return list(messages)

    def pull_messages(self, ids: set[str]) -> list[Any]:
        self.polls += 1
        if self.polls == 2 and self.pushed[0] in ids:
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=self.pushed[0]))]
        return []

    def get_node_ids(self) -> list[int]:
        return [7]


def test_stoppable_grid_collects_like_flower_and_delegates() -> None:
    grid = StoppableGrid(_FakeGrid(), threading.Event(), pull_interval=0.001)
    got = grid.send_and_receive(["a", "b"], timeout=0.05)
    assert [m.metadata.reply_to_message_id for m in got] == ["a"]
    assert grid.get_node_ids() == [7]  # everything else is the wrapped grid's


def test_stoppable_grid_raises_at_the_next_poll_once_stopped() -> None:
    stop = threading.Event()
    grid = StoppableGrid(_FakeGrid(), stop, pull_interval=0.001)
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        grid.send_and_receive(["a"], timeout=None)  # would otherwise wait forever for "a"'s reply
    with pytest.raises(KeyboardInterrupt):
        grid.pull_messages({"a"})


def test_first_signal_sets_the_event_second_raises() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_raises_keyboard_interrupt_inside_the_block_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
    assert signal.getsignal(signal.SIGTERM) is before


def _interrupt_run(
    tmp_path: Path, engine: str, sig: int, rounds: int
) -> tuple[int, dict[str, Any], set[int]]:
    """Start ``stamen simulate smoke``; send ``sig`` once round 1 is logged; return the exit code, the
    results and the processes of that run still alive 10 s after it exited."""
    out, log, mark = tmp_path / "run", tmp_path / "log.txt", uuid.uuid4().hex
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "STAMEN_TEST_MARK": mark}
    stamen = str(Path(sys.executable).parent / "stamen")
    cmd = [stamen, "simulate", "smoke", "--engine", engine, "--out", str(out)]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [*cmd, "--set", f"rounds={rounds}"], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    try:
        for _ in range(1200):  # <= 240 s for round 1 under a loaded machine
            if "round 1/" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)  # generous: the run ends at the driver's next poll
        left = _marked(mark)
        for _ in range(50):  # Ray's processes get up to 10 s to finish exiting
            if not left:
                break
            time.sleep(0.2)
            left = _marked(mark)
    finally:  # whatever happened, nothing this test started outlives it
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _marked(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return rc, json.loads((out / "results.json").read_text()), left


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc for the run's processes")
def test_flower_engine_sigint_keeps_rounds_and_leaves_no_ray_process(tmp_path: Path) -> None:
    rc, res, left = _interrupt_run(tmp_path, "flower", signal.SIGINT, rounds=200)
    assert rc == 130  # the rounds are written; the code says it was interrupted
    assert res["stopped"] == "interrupted"
    assert 1 <= len(res["rounds"]) < 200
    assert [r["round"] for r in res["rounds"]] == list(range(1, len(res["rounds"]) + 1))
    assert not left, f"processes of the run still alive: {sorted(left)}"  # no Ray process outlives it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc for the run's processes")
def test_inprocess_engine_sigterm_keeps_rounds(tmp_path: Path) -> None:
    rc, res, left = _interrupt_run(tmp_path, "inprocess", signal.SIGTERM, rounds=100000)
    assert rc == 130
    assert res["stopped"] == "interrupted"
    assert 1 <= len(res["rounds"]) < 100000
    assert not left
