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
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stamen.simulations.engines import flower
from stamen.simulations.engines.interrupt import (
    StoppableGrid,
    signals_held,
    sigterm_as_interrupt,
    stop_on_signals,
)


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


def test_rearm_puts_the_handlers_back_over_ones_installed_inside_the_block() -> None:
    """``ray.init`` installs its own SIGTERM handler inside the block (and Abseil's, which aborts);
    after ``rearm`` a SIGTERM sets the event again, and the handlers from before come back."""
    stop, theirs = threading.Event(), []
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop) as rearm:
        signal.signal(signal.SIGTERM, lambda signum, frame: theirs.append(signum))
        rearm()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.is_set() and not theirs
    assert signal.getsignal(signal.SIGTERM) is before


def test_signals_held_lets_the_block_finish() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    finished = False
    with signals_held():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # either would have raised (or ended the process) here
        finished = True
    assert finished
    assert {sig: signal.getsignal(sig) for sig in before} == before


def _interrupted_run_simulation(out: Any, hand_over: bool) -> Callable[..., None]:
    """A stand-in for Flower's ``run_simulation`` whose wait on Ray is cut by a second Ctrl-C; the
    driver (told to stop by the first) hands its result over, or never does."""

    def run_simulation(**kwargs: Any) -> None:
        if hand_over:
            out.result = "the finished rounds"
            out.done.set()
        raise KeyboardInterrupt("SIGINT")

    return run_simulation


def test_a_second_interrupt_keeps_the_rounds_the_driver_hands_over(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.simulation

    out = flower._Outcome()
    monkeypatch.setattr(flwr.simulation, "run_simulation", _interrupted_run_simulation(out, True))
    flower._simulate(None, None, 2, {}, out)  # returns: run_flower then returns the result
    assert out.result == "the finished rounds"


def test_a_second_interrupt_without_a_result_still_ends_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.simulation

    out = flower._Outcome()
    monkeypatch.setattr(flwr.simulation, "run_simulation", _interrupted_run_simulation(out, False))
    monkeypatch.setattr(flower, "RESULT_GRACE_S", 0.05)
    with pytest.raises(KeyboardInterrupt):
        flower._simulate(None, None, 2, {}, out)


def test_sigterm_raises_keyboard_interrupt_inside_the_block_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
    assert signal.getsignal(signal.SIGTERM) is before


def _interrupt_run(
    tmp_path: Path, engine: str, sig: int, rounds: int, send: Callable[[int], None] | None = None
) -> tuple[int, dict[str, Any], set[int]]:
    """Start ``stamen simulate smoke`` in a session of its own; once round 1 is logged send ``sig``
    (or call ``send`` with its pid, also its process group's id); return the exit code, the results
    and the processes of that run still alive 10 s after it exited."""
    out, log, mark = tmp_path / "run", tmp_path / "log.txt", uuid.uuid4().hex
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "STAMEN_TEST_MARK": mark}
    cmd = [sys.executable, "-m", "stamen.cli", "simulate", "smoke", "--engine", engine, "--out", str(out)]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [*cmd, "--set", f"rounds={rounds}"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a signal to the group reaches only it
        )
    try:
        for _ in range(1200):  # <= 240 s for round 1 under a loaded machine
            if "round 1/" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        if send is None:
            proc.send_signal(sig)
        else:
            send(proc.pid)
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
    assert (out / "results.json").exists(), log.read_text()
    assert (out / "results.csv").exists() and (out / "plot.png").exists()
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


def _sigint_to_main_then_group(pid: int) -> None:
    """What ``timeout -s INT`` does (the command, then its whole group), and a second Ctrl-C: the
    main process gets SIGINT twice, the second after it began stopping, and every Ray worker once."""
    os.kill(pid, signal.SIGINT)
    time.sleep(0.3)  # apart, so Python does not fold the two into one
    os.killpg(pid, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc for the run's processes")
def test_flower_engine_sigint_to_main_and_group_keeps_rounds(tmp_path: Path) -> None:
    rc, res, left = _interrupt_run(tmp_path, "flower", signal.SIGINT, 200, _sigint_to_main_then_group)
    assert rc == 130  # interrupted (the finished rounds were written, as in-process)
    assert res["stopped"] == "interrupted"
    assert [r["round"] for r in res["rounds"]] == list(range(1, len(res["rounds"]) + 1))
    assert 1 <= len(res["rounds"]) < 200
    assert not left, f"processes of the run still alive: {sorted(left)}"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc for the run's processes")
def test_flower_engine_sigterm_keeps_rounds(tmp_path: Path) -> None:
    """ray.init's own SIGTERM handlers (Abseil's aborted the driver: exit 134, nothing written) are
    replaced by the engine's."""
    rc, res, left = _interrupt_run(tmp_path, "flower", signal.SIGTERM, rounds=200)
    assert rc == 130
    assert res["stopped"] == "interrupted"
    assert [r["round"] for r in res["rounds"]] == list(range(1, len(res["rounds"]) + 1))
    assert 1 <= len(res["rounds"]) < 200
    assert not left, f"processes of the run still alive: {sorted(left)}"
