"""Staleness in the asynchronous modes: FedBuff's step is ``server_lr * sum_k s(tau_k) Delta_k / K``
(Nguyen et al. 2022, Alg. 1), ``weighted`` applies the configured ``s(tau)`` once, and
``downweight`` takes updates staler than ``max_staleness``."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from stamen.protocols import tensor_table
from stamen.server.aggregators import create
from stamen.server.driver.async_driver import AsyncDriver, AsyncSettings, _Step
from stamen.server.driver.async_steps import fedbuff_step
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.downlink import FullDownlink
from stamen.server.staleness import compensation, functions
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.settings import ServerModeConfig
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec
from tests.server.test_async_driver import BASE, ScriptedTransport

FEDBUFF_S = functions.create("fedbuff")  # 1 / sqrt(1 + tau)


def _buffer_step(rule: str, rows: np.ndarray, taus: list[int], counts: list[float], lr: float) -> np.ndarray:
    """One FedBuff release from version 20 with the buffer ``rows`` (taus, counts) from w = 0."""
    settings = AsyncSettings("fedbuff", 30, 3, len(rows), 0.6, lr, 0.0, 0, 1.0, 1)
    stale = StaleHandling(FEDBUFF_S, compensation.create("direct"))
    d = AsyncDriver(settings, None, None, None, CollectPolicy(), create(rule), stale, ModelHistory(4))  # type: ignore[arg-type]
    d.weights = {"w": np.zeros(rows.shape[1], np.float32)}
    d.table, d.version = tensor_table(d.weights), 20
    factors = [stale.async_factor(t) for t in taus]  # = s(tau) for direct, before and after the fix
    clients = [f"c-{i}" for i in range(len(rows))]
    d.step = _Step(rows=list(rows), counts=counts, factors=factors, clients=clients)
    return fedbuff_step(d.weights, d.step, d.table, d.rule, d.policy, d.version, settings, None)[0]["w"]


@pytest.mark.parametrize("rule", ["fedavg", "mean"])
def test_fedbuff_step_is_the_papers_scaled_sum(rule: str) -> None:
    """K = 3, taus 0, 3, 8, equal counts: w = eta * (Delta_0 + Delta_1 / 2 + Delta_2 / 3) / 3."""
    rows = np.random.default_rng(7).normal(size=(3, 5)).astype(np.float32)
    got = _buffer_step(rule, rows, [0, 3, 8], [10.0] * 3, lr=0.7)
    expected = 0.7 * (rows[0] + rows[1] / 2 + rows[2] / 3) / 3
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_fedavg_buffer_weights_by_examples_and_scales_by_staleness() -> None:
    """Counts 5, 10, 25: w = eta * sum_k n_k s_k Delta_k / sum_k n_k."""
    rows = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)
    got = _buffer_step("fedavg", rows, [0, 3, 8], [5.0, 10.0, 25.0], lr=1.0)
    expected = (5 * rows[0] + 10 * rows[1] / 2 + 25 * rows[2] / 3) / 40
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule", ["fedavg", "mean"])
def test_an_all_stale_buffer_steps_less_than_a_fresh_one(rule: str) -> None:
    """Three +1 updates: fresh, the step is 1; all 15 versions stale, s(15) = 0.25 of it."""
    rows = np.ones((3, 2), np.float32)
    fresh = _buffer_step(rule, rows, [0, 0, 0], [10.0] * 3, lr=1.0)
    stale = _buffer_step(rule, rows, [15, 15, 15], [10.0] * 3, lr=1.0)
    np.testing.assert_allclose(fresh, 1.0, rtol=1e-6)
    np.testing.assert_allclose(stale, 0.25, rtol=1e-6)


def _instructions(rnd: int, version: int) -> RoundInstructions:
    return RoundInstructions(rnd, version, 0, "dense", False, TaskSpec(), TrainSpec())


def _run(
    mode: str, stale: StaleHandling, transport: ScriptedTransport, versions: int, history: ModelHistory
) -> np.ndarray:
    settings = AsyncSettings(mode, versions, 2, 1, 0.5, 1.0, 0.0, 0, 1.0, 100)
    policy = CollectPolicy(norm_ratio=0)
    d = AsyncDriver(
        settings, transport, _instructions, FullDownlink(), policy, create("mean"), stale, history
    )
    return d.run(BASE).weights["w"]


def _from(**kw: object) -> StaleHandling:
    cfg = ServerModeConfig(**kw)  # type: ignore[arg-type]
    return StaleHandling.from_settings(cfg, lambda: compensation.create("direct"))


def test_a_stale_arrival_scales_the_fedbuff_step() -> None:
    """K = 1, s(tau) = 1/(1 + tau): c-1 (+1, fresh) gives w = 1; c-2 (+2, tau 1) adds s(1) * 2 = 1."""
    stale = _from(staleness="polynomial", params={"a": 1.0})
    w = _run(
        "fedbuff", stale, ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"]), 2, ModelHistory(8)
    )
    np.testing.assert_allclose(w, 2.0, rtol=1e-6)


@pytest.mark.parametrize(("mode", "expected"), [("fedbuff", 2.0), ("fedasync", 0.875)])
def test_weighted_applies_the_configured_s_once(mode: str, expected: float) -> None:
    """compensation = weighted, s(tau) = 1/(1 + tau), c-2's update +2 at tau 1. fedbuff: scaled to
    +1 and the row not scaled again: w = 1 + 1. fedasync (alpha 0.5): Xie et al.'s mixing weight
    alpha s(tau) on the unscaled client model: w1 = 0.5, w2 = 0.75 w1 + 0.25 (w0 + 2) = 0.875 (the
    same as `direct`; s applied twice would give 0.6875, s on the update and alpha 0.75)."""
    stale = _from(staleness="polynomial", params={"a": 1.0}, compensation="weighted")
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"])
    np.testing.assert_allclose(_run(mode, stale, transport, 2, ModelHistory(8)), expected, rtol=1e-6)


def test_fedasync_weighted_never_pulls_the_model_to_a_stale_base() -> None:
    """c-1 (+1 on the version it was sent) arrives 12 times, fresh: w = 12 * 0.5 = 6; then c-2 sends
    a zero update 12 versions stale. Mixing w_0 + s Delta with alpha would drag w halfway back to
    w_0 = 0 (w = 3); with alpha s(12) = 0.5 / 13 it moves by w / 26, as `direct` does."""
    out = {}
    for comp in ("direct", "weighted"):
        stale = _from(staleness="polynomial", params={"a": 1.0}, compensation=comp)
        transport = ScriptedTransport({"c-1": 1.0, "c-2": 0.0}, ["c-1"] * 12 + ["c-2"])
        out[comp] = float(_run("fedasync", stale, transport, 13, ModelHistory(16))[0])
    assert out["weighted"] == pytest.approx(out["direct"], rel=1e-6)
    assert out["weighted"] == pytest.approx(6.0 * (1 - 0.5 / 13), rel=1e-5)


def _evicting() -> tuple[ScriptedTransport, ModelHistory]:
    """c-1 arrives three times (versions 1..3); c-2 then arrives 3 versions stale, its base
    version 0 evicted by a byte bound of two versions (3 float32 each)."""
    order = ["c-1", "c-1", "c-1", "c-2"]
    return ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, order), ModelHistory(max_bytes=24)


def test_downweight_takes_updates_staler_than_the_bound_without_their_base() -> None:
    """max_staleness = 1, downweight: c-2 (+2, tau 3) counts (1/3) s(3) = 1/12: w = 3 + 2/12."""
    stale = _from(staleness="polynomial", params={"a": 1.0}, max_staleness=1, stale_policy="downweight")
    transport, history = _evicting()
    np.testing.assert_allclose(_run("fedbuff", stale, transport, 4, history), 3 + 2 / 12, rtol=1e-6)


def test_an_evicted_base_that_is_needed_is_refused_naming_the_memory_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FedAsync mixes the client's model w_0 + delta: without w_0 the update is refused."""
    stale = _from(staleness="polynomial", params={"a": 1.0}, max_staleness=1, stale_policy="downweight")
    transport, history = _evicting()
    with caplog.at_level("WARNING", logger="stamen.server"):
        _run("fedasync", stale, transport, 4, history)
    assert (
        "c-2: UnknownVersionError: model version 0 is no longer held (evicted to keep the history "
        in caplog.text
    )
    assert "within max_bytes=24)" in caplog.text


def test_downweight_in_an_assembled_fedbuff_run_keeps_stale_updates() -> None:
    """The assembled run keeps the versions downweight may name: updates staler than
    max_staleness = 1 are used (down-weighted), none is refused."""
    args = ["rounds=8", "server.mode=fedbuff", "server.buffer_size=1", "server.concurrency=4"]
    plan = SimulationPlan.from_scenario(
        load_scenario("smoke", [*args, "server.max_staleness=1", "server.stale_policy=downweight"])
    )
    result = run_engine("inprocess", plan)
    taus = sum((Counter(h) for h in result.extra["staleness_histogram"]), Counter())
    assert max(taus) > 1 and sum(r.rejected for r in result.rounds) == 0
    assert result.extra["history"]["max_versions"] is None


def test_fedasync_applies_a_dcasgd_delta_to_the_current_model() -> None:
    """dcasgd rewrites a stale Delta for the current model w_t (lambda = 0: plain ASGD, the stale
    update applied to w_t): c-1 (+1, fresh) gives w1 = 0.5; c-2 (+2, tau 1) mixes w1 + 2 with
    alpha s(1) = 0.25: w2 = 0.5 + 0.25 * 2 = 1.0 (mixing its stale base w0 + 2 gave 0.875)."""
    stale = _from(staleness="polynomial", params={"a": 1.0}, compensation="dcasgd", dc_lambda=0.0)
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"])
    np.testing.assert_allclose(_run("fedasync", stale, transport, 2, ModelHistory(8)), 1.0, rtol=1e-6)
