"""The in-process engine's paths: cohort-batched training and worker processes give the per-client
loop's results; fallbacks say why; ``[engine]`` settings are checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stamen.simulations.engine_config import (
    AUTO_MIN_UPDATES,
    resolve_workers,
)
from stamen.simulations.engines import run_engine
from stamen.simulations.engines.inprocess import engine_path
from stamen.simulations.parallel import WorkerPool, slices
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.results import write_results
from stamen.simulations.scenario import load_scenario
from stamen.task.models import model_structure


def _plan(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("smoke", list(overrides)))


def _summary(plan: SimulationPlan) -> list[tuple[float, float, int]]:
    res = run_engine("inprocess", plan)
    return [(r.accuracy, r.loss, r.bytes_up) for r in res.rounds]


def _close(a: list[tuple[float, float, int]], b: list[tuple[float, float, int]]) -> None:
    assert len(a) == len(b)
    for (acc_a, loss_a, up_a), (acc_b, loss_b, up_b) in zip(a, b, strict=True):
        assert up_a == up_b
        assert acc_a == pytest.approx(acc_b, abs=1e-9)
        assert loss_a == pytest.approx(loss_b, rel=1e-5)


@pytest.mark.parametrize(
    "extra",
    [(), ("codec.pipeline=topk,int8", "codec.topk.ratio=0.1", "codec.error_feedback=true")],
)
def test_batched_equals_per_client(extra: tuple[str, ...]) -> None:
    """Same envelopes (bytes), same aggregate: accuracy and loss of every round agree."""
    off = _summary(_plan("engine.batching=off", *extra))
    on = _summary(_plan("engine.batching=on", *extra))
    _close(on, off)


def test_batched_pinned_first_round() -> None:
    """Pinned: smoke round 1 with the batched path (per-client loop gives the same)."""
    acc, loss, up = _summary(_plan("engine.batching=on", "rounds=1"))[0]
    assert up == 39744  # 4 dense envelopes of the digits MLP 64-32-10
    assert acc == pytest.approx(0.3722, abs=2e-3)
    assert loss == pytest.approx(2.1003, abs=1e-3)


def test_results_record_the_path_and_the_fallback() -> None:
    res = run_engine("inprocess", _plan("rounds=1", "clients.trainer=sparse"))
    assert res.extra["engine_path"]["training"] == "per-client"
    assert "sparse" in res.extra["engine_path"]["fallback"]
    res = run_engine("inprocess", _plan("rounds=1"))
    assert res.extra["engine_path"].pop("peak_rss_mib") > 10  # MiB: at least the interpreter and torch
    assert res.extra["engine_path"].pop("peak_rss_worker_mib") >= 0
    assert res.extra["engine_path"] == {
        "training": "cohort-batched",
        "workers": 1,
        "device": "cpu",
        "fallback": None,
        "single_process": None,
        "threads": 1,
        "client_states_spilled": 0,
        "rounds_in_workers": 0,
        "worker_start": None,
    }


def test_spilled_client_memory_gives_the_same_run() -> None:
    """Error-feedback residuals spilled to disk after every round (bound 0) change nothing."""
    ef = ("codec.pipeline=topk,int8", "codec.topk.ratio=0.1", "codec.error_feedback=true", "rounds=3")
    held = run_engine("inprocess", _plan(*ef))
    spilled = run_engine("inprocess", _plan(*ef, "engine.state_memory_mb=0"))
    assert held.extra["engine_path"]["client_states_spilled"] == 0
    assert spilled.extra["engine_path"]["client_states_spilled"] > 0
    for a, b in zip(held.rounds, spilled.rounds, strict=True):
        assert (a.accuracy, a.loss, a.bytes_up) == (b.accuracy, b.loss, b.bytes_up)


def test_batching_on_refuses_what_cannot_batch() -> None:
    plan = _plan("engine.batching=on", "privacy.mode=dp_sgd")
    with pytest.raises(ValueError, match=r"engine\.batching='on'.*dp_sgd"):
        engine_path(plan, model_structure(plan.cfg.task))


def test_bad_engine_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="batching"):
        _plan("engine.batching=maybe")
    with pytest.raises(ValueError, match="workers"):
        _plan("engine.workers=-1")


def test_engine_threads_are_recorded_and_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """``engine.threads`` sets the engine's torch threads (default 1), is recorded, and the engine
    gives the caller back its own thread count; two threads give one thread's results to float
    tolerance."""
    assert engine_path(_plan(), model_structure(_plan().cfg.task)).threads == 1
    one = run_engine("inprocess", _plan("engine.batching=on", "engine.threads=1", "rounds=2"))
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", _spy(torch.set_num_threads, calls))
    caller = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # a caller's count the engine never uses itself
        two = run_engine("inprocess", _plan("engine.batching=on", "engine.threads=2", "rounds=2"))
        assert [c[0] for c in calls] == [3, 1, 2, 3]  # caller, engine default, the run, restored
        assert two.extra["engine_path"]["threads"] == 2 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(caller)
    _close(
        [(r.accuracy, r.loss, r.bytes_up) for r in two.rounds],
        [(r.accuracy, r.loss, r.bytes_up) for r in one.rounds],
    )
    with pytest.raises(ValueError, match="threads"):
        _plan("engine.threads=0")
    two_workers = _plan("engine.threads=2", "engine.workers=2")  # mixed thread counts: refused
    with pytest.raises(ValueError, match=r"engine\.threads=2 needs one training process"):
        engine_path(two_workers, model_structure(two_workers.cfg.task))


def test_resolve_workers_hand_cases() -> None:
    assert resolve_workers(3, 10, "cpu", cpus=2) == 3  # asked for: given
    assert resolve_workers(0, AUTO_MIN_UPDATES - 1, "cpu", cpus=2) == 1  # small run: one process
    assert resolve_workers(0, AUTO_MIN_UPDATES, "cpu", cpus=2) == 2
    assert resolve_workers(0, 10**6, "cpu", cpus=64) == 8  # capped
    assert resolve_workers(0, 10**6, "cuda", cpus=64) == 1  # one process owns the GPU
    assert resolve_workers(0, 10**6, "cpu", cpus=64, batched=True) == 1  # the kernel batches already
    assert resolve_workers(2, 10**6, "cpu", cpus=64, batched=True) == 2  # asked for: given


@given(st.integers(0, 500), st.integers(1, 20))
def test_slices_cover_in_order_and_balance(n: int, parts: int) -> None:
    cut = slices(n, parts)
    assert [i for r in cut for i in r] == list(range(n))
    assert all(len(r) > 0 for r in cut)
    if cut:
        assert max(map(len, cut)) - min(map(len, cut)) <= 1
        assert len(cut) == min(n, parts)


def test_slices_hand_case() -> None:
    assert slices(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    with pytest.raises(ValueError, match="parts"):
        slices(4, 0)


STATEFUL = (
    "codec.pipeline=topk,int8",
    "codec.topk.ratio=0.1",
    "codec.error_feedback=true",
    "privacy.mode=local",
    "privacy.noise=seeded",  # the runs are compared value for value
)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), STATEFUL], ids=["dense", "ef-local-dp"])
@pytest.mark.parametrize("batching", ["off", "on"])
def test_two_workers_equal_one_process(
    batching: str, extra: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes train and release (error-feedback residuals and local DP noise from the
    client's own state and seed, the state carried back across rounds): the same results as the
    engine's own loop; the per-client loop exactly, to the final weights. The engine waits for the
    workers here (a run that short would otherwise finish before they are up)."""
    one = run_engine("inprocess", _plan(f"engine.batching={batching}", "rounds=3", *extra))
    ready, rounds = WorkerPool.ready, []
    monkeypatch.setattr(WorkerPool, "ready", lambda self, wait=False: ready(self, wait=True))
    monkeypatch.setattr(WorkerPool, "run", _spy(WorkerPool.run, rounds))
    two = run_engine(
        "inprocess", _plan(f"engine.batching={batching}", "rounds=3", "engine.workers=2", *extra)
    )
    assert len(rounds) == 3 == two.extra["engine_path"]["rounds_in_workers"]  # every round ran there
    assert two.extra["engine_path"]["worker_start"] in ("fork", "forkserver")
    if batching == "off":
        assert [(r.accuracy, r.loss, r.bytes_up) for r in one.rounds] == [
            (r.accuracy, r.loss, r.bytes_up) for r in two.rounds
        ]
        for name, w in one.weights.items():
            np.testing.assert_array_equal(w, two.weights[name])
    else:
        _close(
            [(r.accuracy, r.loss, r.bytes_up) for r in two.rounds],
            [(r.accuracy, r.loss, r.bytes_up) for r in one.rounds],
        )


def _spy(fn: Callable[..., Any], calls: list[object]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return fn(*args, **kwargs)

    return wrapped


def test_engine_path_is_written_to_results_json(tmp_path: Path) -> None:
    """The CLI writes the engine's name and its path side by side (no reserved-key clash)."""
    plan = _plan("rounds=1")
    res = run_engine("inprocess", plan)
    paths = write_results(tmp_path, plan.scenario.to_dict(), res.rounds, engine="inprocess", extra=res.extra)
    written = json.loads(paths["json"].read_text())
    assert written["engine"] == "inprocess"
    assert written["engine_path"]["training"] == "cohort-batched"


@pytest.mark.parametrize("downlink", ["full", "cached"])
def test_cohort_trips_give_the_one_by_one_run(monkeypatch: pytest.MonkeyPatch, downlink: str) -> None:
    """A cohort's trips drawn at once (in-process engine, batched) leave every round as drawing them
    one by one does: simulated times, drop-outs, accuracy and bytes exactly (with a cached downlink
    too, whose patches differ by the version each client holds)."""
    import stamen.simulations.engines.inprocess as inprocess

    plan = (
        "data.num_clients=40", "clients.per_round=20", "rounds=4", "engine.batching=on",
        "timing.dropout_prob=0.2", "timing.compute_jitter_sigma=0.3", f"clients.downlink={downlink}",
    )  # fmt: skip

    def rounds() -> list[tuple[float, int, float, int]]:
        res = run_engine("inprocess", _plan(*plan))
        return [(r.sim_time_s, r.rejected, r.accuracy, r.bytes_up) for r in res.rounds]

    together = rounds()
    monkeypatch.setattr(inprocess, "COHORT_TRIPS", 10**9)
    assert rounds() == together
    assert sum(r[1] for r in together) > 0  # drop-outs happened


def test_downlink_sizes_tell_patches_apart() -> None:
    """Patched clients (weights None) holding different versions get their own patch's size."""
    from types import SimpleNamespace

    from stamen.simulations.engines.clock import downlink_sizes

    def patch(n: int) -> SimpleNamespace:
        return SimpleNamespace(to_arrays=lambda: {"w": np.zeros(n, np.float32)})

    full = {"w": np.zeros(10, np.float32)}
    small, big = patch(2), patch(5)
    tasks = [
        SimpleNamespace(downlink=None, weights=full, patch=None),
        SimpleNamespace(downlink=None, weights=None, patch=small),
        SimpleNamespace(downlink=None, weights=None, patch=big),
        SimpleNamespace(downlink=None, weights=None, patch=small),
        SimpleNamespace(downlink=b"abc", weights=None, patch=None),
    ]
    assert downlink_sizes(tasks) == [40, 8, 20, 8, 3]  # type: ignore[arg-type]


def test_jobs_group_by_weights_and_equal_instructions() -> None:
    """Equal instructions in distinct objects share a cohort; other instructions or another base
    start a new one; task order is kept inside each group."""
    from stamen.server.driver.types import TrainTask
    from stamen.simulations.engines.rows import RowJob, _groups
    from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

    def instr(lr: float) -> RoundInstructions:
        return RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec(lr=lr))

    def job(i: int, ins: RoundInstructions, base: str = "b0") -> RowJob:
        return RowJob(i, i, TrainTask(f"client-{i}", ins, {}, None, base))

    a, a2, b = instr(0.1), instr(0.1), instr(0.2)
    jobs = [job(0, a), job(1, b), job(2, a2), job(3, a, "b1"), job(4, a2), job(5, b)]
    assert [[j.index for j in g] for g in _groups(jobs)] == [[0, 2, 4], [1, 5], [3]]


def test_a_close_that_raises_still_closes_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client-state store's close raising does not leave the worker pool open, and torch is
    back at the caller's thread count."""
    from stamen.simulations.client_states import ClientStates

    def boom(self: ClientStates) -> None:
        raise RuntimeError("state store failed to close")

    closed: list[object] = []
    monkeypatch.setattr(ClientStates, "close", boom)
    monkeypatch.setattr(WorkerPool, "close", _spy(WorkerPool.close, closed))
    caller = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with pytest.raises(RuntimeError, match="state store failed"):
            run_engine("inprocess", _plan("rounds=1", "engine.workers=2", "engine.threads=1"))
        assert len(closed) == 1 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(caller)
