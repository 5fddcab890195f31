"""Resume a run from its state-dir (server/checkpoint_run.py) with the in-process engine.

A synchronous run stopped after round k and resumed gives the uninterrupted run's model and records
(central DP's ε included, top-k error feedback in the clients' memory); an asynchronous FedBuff run
keeps its open buffer; a finished state-dir only reports; another configuration is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stamen.cli import main
from stamen.server import checkpoint_run
from stamen.server.checkpoint import CheckpointError, read_checkpoint, records_equal
from stamen.simulations.engines.inprocess import run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

pytestmark = pytest.mark.slow

# every piece of state that must survive: central DP's accountant and noise, top-k residuals
SYNC = [
    "rounds=4",
    "privacy.mode=central",
    "privacy.noise=seeded",  # resumed bit for bit: the noise of the run seed
    "aggregation.rule=mean",
    "codec.pipeline=topk",
    "codec.error_feedback=true",
]
FEDBUFF = ["rounds=4", "server.mode=fedbuff", "server.buffer_size=3", "server.concurrency=4"]


def _plan(overrides: list[str], state_dir: Path | None = None) -> SimulationPlan:
    plan = SimulationPlan.from_scenario(load_scenario("smoke", overrides))
    plan.state_dir = state_dir
    return plan


def _stop_after(rnd: int):  # type: ignore[no-untyped-def]
    def progress(rec) -> None:  # type: ignore[no-untyped-def]
        if rec.round == rnd:
            raise KeyboardInterrupt

    return progress


def test_sync_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    ref = run_inprocess(_plan(SYNC))
    first = run_inprocess(_plan(SYNC, tmp_path), _stop_after(2))
    assert first.stopped == "interrupted" and len(first.rounds) == 2
    ck = read_checkpoint(tmp_path)
    assert ck is not None and (ck.step, ck.finished) == (2, False)
    assert ck.state["clients"]["clients"]["0"]["arrays"]  # top-k residuals were checkpointed

    resumed = run_inprocess(_plan(SYNC, tmp_path))
    assert resumed.extra["resumed_from"] == 2 and resumed.stopped is None
    for k in ref.weights:
        np.testing.assert_allclose(resumed.weights[k], ref.weights[k], rtol=0, atol=1e-7)
    assert records_equal(resumed.rounds, ref.rounds)  # accuracy, bytes, ε and simulated time alike
    assert [r.epsilon for r in resumed.rounds] == [r.epsilon for r in ref.rounds]
    assert resumed.rounds[-1].epsilon == pytest.approx(
        7.9996, abs=1e-3
    )  # pinned: calibrated to ε = 8 over 4 rounds

    # a finished state-dir reports the result and trains nothing
    done = read_checkpoint(tmp_path)
    assert done is not None and done.finished and done.step == 4
    again = run_inprocess(_plan(SYNC, tmp_path), _stop_after(1))
    assert again.extra["resumed_from"] == 4 and records_equal(again.rounds, ref.rounds)


def test_resume_without_client_memory_differs(tmp_path: Path) -> None:
    # the equality above needs the restored residuals: dropping them changes round 3
    ref = run_inprocess(_plan(SYNC))
    run_inprocess(_plan(SYNC, tmp_path), _stop_after(2))
    plan = _plan(SYNC, tmp_path)
    original = plan.driver

    def driver_without_memory(transport, devices):  # type: ignore[no-untyped-def]
        d = original(transport, devices)
        d.resume.parts["clients"] = (lambda snap: {}, lambda tree, snap: None)
        return d

    plan.driver = driver_without_memory  # type: ignore[method-assign]
    resumed = run_inprocess(plan)
    assert not all(np.array_equal(resumed.weights[k], ref.weights[k]) for k in ref.weights)


def test_fedbuff_keeps_its_open_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save, calls = checkpoint_run.RunState.save, []

    def save_then_kill(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # version 1 released after 3 replies; 2 more sit in the buffer
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_run.RunState, "save", save_then_kill)
    first = run_inprocess(_plan(FEDBUFF, tmp_path))
    monkeypatch.undo()
    assert first.stopped == "interrupted"
    ck = read_checkpoint(tmp_path)
    assert ck is not None and ck.step == 1 and not ck.finished
    buffered = ck.state["driver"]["step"]["clients"]
    assert len(buffered) == 2 and len(ck.state["driver"]["step"]["rows"]) == 2  # one array per row

    resumed = run_inprocess(_plan(FEDBUFF, tmp_path))
    assert resumed.extra["resumed_from"] == 1 and resumed.stopped is None
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4]
    assert records_equal(resumed.rounds[:1], ck.records)
    # version 2's release counts the two buffered updates: its stack had 3 rows, 2 from before the kill
    assert sum(resumed.extra["staleness_histogram"][1].values()) == 3
    assert read_checkpoint(tmp_path).finished  # type: ignore[union-attr]


def test_cli_resumes_reports_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_inprocess(_plan(["rounds=2"], tmp_path), _stop_after(1))
    argv = ["simulate", "smoke", "--quiet", "--state-dir", str(tmp_path), "--set", "rounds=2"]
    assert main([*argv, "--out", str(tmp_path / "o1")]) == 0
    assert f"state-dir {tmp_path} resumed (after round 1)" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 0
    assert f"state-dir {tmp_path} holds a finished run (after round 2)" in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "results.json").read_text())["rounds"][1]["round"] == 2

    code = main([*argv, "--out", str(tmp_path / "o3"), "--set", "clients.lr=0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "another configuration: settings.clients.lr (0.2 -> 0.1)" in err
    assert main([*argv, "--engine", "flower"]) == 2
    assert "--state-dir works with --engine inprocess" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"state-dir .* is a file"):
        run_inprocess(_plan(["rounds=2"], tmp_path / "checkpoint.safetensors"))
    below_a_file = tmp_path / "checkpoint.safetensors" / "sub"  # was a NotADirectoryError traceback
    with pytest.raises(CheckpointError, match=r"state-dir .*/sub: .*checkpoint.safetensors is a file"):
        run_inprocess(_plan(["rounds=2"], below_a_file))
    assert main([*argv[:3], "--state-dir", str(below_a_file), "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stamen: error: state-dir ") and err.count("\n") == 1, err


CLI = "import sys; from stamen.cli import main; sys.exit(main(sys.argv[1:]))"


def _simulate(state_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", CLI, "simulate", "smoke", "--quiet", "--set", "rounds=8",
            "--state-dir", str(state_dir), "--out", str(out)]  # fmt: skip


def test_sigkill_after_round_k_then_resume(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
    run_inprocess(_plan(["rounds=8"], ref_dir))  # the uninterrupted run (same plan as the CLI's)
    proc = subprocess.Popen(
        _simulate(dir_, tmp_path / "o2"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_at = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            ck = read_checkpoint(dir_) if (dir_ / "checkpoint.safetensors").exists() else None
            if ck is not None and ck.step >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = ck.step
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    after_kill = read_checkpoint(dir_)
    assert killed_at is not None and after_kill is not None and not after_kill.finished
    assert 2 <= after_kill.step < 8
    subprocess.run(_simulate(dir_, tmp_path / "o3"), check=True, env=env, timeout=300, capture_output=True)
    ref, got = read_checkpoint(ref_dir), read_checkpoint(dir_)
    assert ref is not None and got is not None and ref.finished and got.finished
    for k in ref.weights:
        np.testing.assert_allclose(got.weights[k], ref.weights[k], rtol=0, atol=1e-7)
    assert records_equal(got.records, ref.records)
