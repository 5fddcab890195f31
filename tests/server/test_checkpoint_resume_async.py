"""An asynchronous in-process run and a ``gi`` run resumed from their state-dir repeat the
uninterrupted run: the same simulated times, records and weights (the virtual clock, its pending
replies, the tasks in flight, the clients' memory and trip counters, the GI policy's state all
survive). Checkpoints written before these parts existed resume with one warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stamen.server import checkpoint_run
from stamen.server.checkpoint import read_checkpoint, records_equal, write_checkpoint
from stamen.server.history import FederationResult
from stamen.simulations.engines.inprocess import run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

pytestmark = pytest.mark.slow

# per-trip jitter and drop-outs: the trip counters matter and lost trips sit on the clock
JITTER = ["timing.compute_jitter_sigma=0.5", "timing.dropout_prob=0.2"]
FEDASYNC_EF = [
    *JITTER,
    "server.mode=fedasync",
    "rounds=14",
    "codec.pipeline=topk",
    "codec.error_feedback=true",
]
GI_ASYNC = [
    "server.mode=fedbuff",
    "server.compensation=gi",
    "rounds=6",
    "server.concurrency=5",
    "server.buffer_size=2",
]


def _plan(scenario: str, overrides: list[str], state_dir: Path | None = None) -> SimulationPlan:
    plan = SimulationPlan.from_scenario(load_scenario(scenario, overrides))
    plan.state_dir = state_dir
    return plan


def _stop_after(version: int):  # type: ignore[no-untyped-def]
    def progress(rec) -> None:  # type: ignore[no-untyped-def]
        if rec.round == version:
            raise KeyboardInterrupt

    return progress


def _killed_at_save(scenario: str, overrides: list[str], state_dir: Path, saves: int) -> FederationResult:
    """The run stopped right after its ``saves``-th checkpoint (mid-buffer, replies in flight)."""
    save, calls = checkpoint_run.RunState.save, []

    def save_then_stop(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == saves:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_run.RunState, "save", save_then_stop)
        return run_inprocess(_plan(scenario, overrides, state_dir))


def _assert_same(got: FederationResult, ref: FederationResult) -> None:
    assert records_equal(got.rounds, ref.rounds)  # sim_time_s, accuracy, bytes, staleness alike
    assert got.extra.get("staleness_histogram") == ref.extra.get("staleness_histogram")
    for k in ref.weights:
        np.testing.assert_allclose(got.weights[k], ref.weights[k], rtol=0, atol=1e-7)


def test_fedbuff_stopped_by_progress_resumes_as_if_never_stopped(tmp_path: Path) -> None:
    ref = run_inprocess(_plan("async-speeds-quick", JITTER))
    first = run_inprocess(_plan("async-speeds-quick", JITTER, tmp_path), _stop_after(5))
    ck = read_checkpoint(tmp_path)
    # the version the progress callback was shown (and results.json holds) is checkpointed
    assert first.stopped == "interrupted" and len(first.rounds) == 5
    assert ck is not None and ck.step == 5
    engine = ck.state["engine"]
    assert len(engine["in_flight"]) == len(engine["clock"]["events"]) == 5  # concurrency 6, one arrived
    assert engine["clock"]["now"] == pytest.approx(ref.rounds[4].sim_time_s, abs=1e-12)
    resumed = run_inprocess(_plan("async-speeds-quick", JITTER, tmp_path))
    assert resumed.extra["resumed_from"] == 5 and resumed.stopped is None
    _assert_same(resumed, ref)
    assert resumed.rounds[5].sim_time_s == pytest.approx(7.532, abs=1e-3)  # pinned: not restarted at 0


def test_fedasync_with_error_feedback_killed_between_versions(tmp_path: Path) -> None:
    ref = run_inprocess(_plan("async-speeds-quick", FEDASYNC_EF))
    _killed_at_save("async-speeds-quick", FEDASYNC_EF, tmp_path, 7)
    ck = read_checkpoint(tmp_path)
    _assert_same(run_inprocess(_plan("async-speeds-quick", FEDASYNC_EF, tmp_path)), ref)
    assert ck is not None and ck.step == 7 and ck.state["engine"]["clients"]["clients"]  # residuals


def test_sync_run_with_trip_jitter_resumes_the_same_simulated_time(tmp_path: Path) -> None:
    """The trip counters: a client sampled again after the resume draws its next trip, not its first."""
    overrides = ["rounds=4", *JITTER]
    ref = run_inprocess(_plan("smoke", overrides))
    run_inprocess(_plan("smoke", overrides, tmp_path), _stop_after(2))
    resumed = run_inprocess(_plan("smoke", overrides, tmp_path))
    _assert_same(resumed, ref)
    assert resumed.rounds[3].sim_time_s == pytest.approx(1800.788, abs=1e-3)  # pinned (timeouts of 600 s)


@pytest.mark.parametrize(
    ("overrides", "stop"),
    [(["server.compensation=gi", "rounds=8"], 4), (GI_ASYNC, 3)],
    ids=["sync", "fedbuff"],
)
def test_gi_run_resumes_to_the_same_result(tmp_path: Path, overrides: list[str], stop: int) -> None:
    ref = run_inprocess(_plan("async-stale-quick", overrides))
    run_inprocess(_plan("async-stale-quick", overrides, tmp_path), _stop_after(stop))
    ck = read_checkpoint(tmp_path)
    _assert_same(run_inprocess(_plan("async-stale-quick", overrides, tmp_path)), ref)
    assert ck is not None and ck.state["driver"]["stale"]["policy"]["counts"]["converted"] > 0


def test_async_checkpoint_from_before_the_engine_state_resumes_forward(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Written before the engine's part (and the GI part) existed: one warning each, and the
    simulated clock goes on from the last record instead of restarting at 0."""
    overrides = ["server.compensation=gi", "server.mode=fedbuff", "rounds=6"]
    run_inprocess(_plan("async-stale-quick", overrides, tmp_path), _stop_after(3))
    ck = read_checkpoint(tmp_path)
    assert ck is not None
    driver = {k: v for k, v in ck.state["driver"].items() if k != "stale"}
    write_checkpoint(tmp_path, ck.__class__(**{**ck.__dict__, "state": {"driver": driver}}))
    with caplog.at_level("WARNING"):
        resumed = run_inprocess(_plan("async-stale-quick", overrides, tmp_path))
    warned = [r.getMessage() for r in caplog.records if "predates" in r.getMessage()]
    assert len(warned) == 2 and all("\n" not in w for w in warned)
    times = [r.sim_time_s for r in resumed.rounds]
    assert resumed.stopped is None and times == sorted(times) and times[3] > times[2] > 0
