"""``stamen simulate``'s progress bar in a terminal: it redraws itself from a thread, which must not
be alive when the in-process engine forks its worker processes (else they start from the
forkserver, seconds later); it still appears from round 1's start."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import rich
from rich.console import Console

from stamen.cli import main
from stamen.simulations import parallel


def test_the_bar_starts_after_the_workers_fork(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=screen, force_terminal=True, width=100))
    before = set(threading.enumerate())  # (threads an earlier test left are not this run's)
    seen: list[set[threading.Thread]] = []
    real_context = parallel.context

    def context(device: str = "cpu") -> Any:
        seen.append(set(threading.enumerate()) - before - {threading.current_thread()})
        return real_context(device)

    monkeypatch.setattr(parallel, "context", context)
    out = tmp_path / "run"
    argv = ["simulate", "smoke", "--out", str(out), "--set", "rounds=2"]
    assert main([*argv, "--set", "engine.workers=2", "--set", "engine.batching=off"]) == 0
    assert len(seen) == 1 and seen[0] == set()  # no thread of this run alive when the pool is made
    assert "rounds" in screen.getvalue() and "2/2" in screen.getvalue()  # the bar was drawn
    if before <= {threading.main_thread()}:  # nothing else alive: the workers are forks
        engine_path = json.loads((out / "results.json").read_text())["engine_path"]
        assert engine_path["worker_start"] == "fork"


def test_the_bar_shows_from_round_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lazy, it starts at the engine's first report: ``0`` clients of round 1 done, before any
    trains (the per-client loop reports each client; a cohort reports once it is done)."""
    from stamen.progress import Progress

    screen = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=screen, force_terminal=True, width=100))
    with Progress(3, 100, True, "round", lazy=True) as prog:
        assert prog._p is None  # nothing drawn, no thread, before the engine reports
        prog.client(0, 100)
        assert prog._p is not None and prog._clients_task is not None
    assert "rounds" in screen.getvalue() and "clients" in screen.getvalue()


def test_an_async_run_shows_its_bar_from_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An asynchronous in-process run forks no worker and reports nothing before its first model
    version: its bar was drawn only once that version was made (nothing on screen until then)."""
    from stamen.simulations import engines

    monkeypatch.setattr(rich, "_console", Console(file=io.StringIO(), force_terminal=True, width=100))
    up_at_start: list[bool] = []
    real_run = engines.run_engine

    def run_engine(name: str, plan: Any, progress: Any, **kwargs: Any) -> Any:
        up_at_start.append(progress.__self__._p is not None)
        return real_run(name, plan, progress, **kwargs)

    monkeypatch.setattr(engines, "run_engine", run_engine)
    fedbuff = ["rounds=2", "server.mode=fedbuff", "server.buffer_size=2", "server.concurrency=3"]
    argv = ["simulate", "smoke", "--out", str(tmp_path / "run")]
    assert main([*argv, *(a for kv in fedbuff for a in ("--set", kv))]) == 0
    assert up_at_start == [True]
