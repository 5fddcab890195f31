"""FedAsync and FedBuff: hand-checked steps, staleness and versions, refusals, the virtual clock."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from stamen.protocols import CodecPipeline, CodecSpec, encode_update, keys, model_hash
from stamen.server.aggregators import create
from stamen.server.checkpoint import read_checkpoint
from stamen.server.checkpoint_run import RunState
from stamen.server.driver.async_driver import FRUITLESS_REPLIES, AsyncDriver, AsyncSettings
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.downlink import FullDownlink
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.staleness import compensation, functions
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

BASE = {"w": np.zeros(3, np.float32)}
EQUAL_SPEEDS = ("timing.compute_sigma=0", "timing.bandwidth_sigma=0", "timing.latency_s=0")


class ScriptedTransport:
    """Replies in a fixed order: each client's update is ``+value`` on every weight."""

    def __init__(
        self,
        values: dict[str, float],
        order: list[str],
        version_claim: dict[str, int] | None = None,
        codecs: dict[str, str] | None = None,
    ):
        self.values, self.order, self.claim = values, list(order), version_claim or {}
        self.codecs = codecs or {}
        self.sent: dict[str, TrainTask] = {}

    def clients(self) -> list[str]:
        return sorted(self.values)

    def ready(self, client: str) -> bool:
        return True

    def now(self) -> float:
        return math.nan

    def wait_ready(self, eligible: object = None) -> bool:
        return False

    def advance_to_window(self, eligible: object = None) -> bool:
        return False

    def push(self, task: TrainTask) -> None:
        self.sent[task.client] = task

    def pull(self, timeout: float) -> list[Reply]:
        for i, client in enumerate(self.order):
            if client in self.sent:
                self.order.pop(i)
                task = self.sent.pop(client)
                delta = {"w": np.full(3, self.values[client], np.float32)}
                version = self.claim.get(client, task.instructions.version)
                data = encode_update(
                    delta,
                    CodecSpec.parse(self.codecs.get(client, "dense")),
                    base_hash=task.expected_base,
                    version=version,
                    sender=client,
                    rng=np.random.default_rng(0),
                )
                return [Reply(client, envelope=data, metrics={keys.NUM_EXAMPLES: 1}, nbytes=len(data))]
        return []


def _driver(
    mode: str, transport: ScriptedTransport, versions: int, *, k: int = 2, conc: int = 2
) -> AsyncDriver:
    settings = AsyncSettings(mode, versions, conc, k, 0.5, 1.0, 0.0, 0, 1.0, 100)
    stale = StaleHandling(functions.create("polynomial", a=1.0), compensation.create("direct"))

    def instructions(rnd: int, version: int) -> RoundInstructions:
        return RoundInstructions(rnd, version, 0, "dense", False, TaskSpec(), TrainSpec())

    policy = CollectPolicy(norm_ratio=0)
    return AsyncDriver(
        settings, transport, instructions, FullDownlink(), policy, create("mean"), stale, ModelHistory(8)
    )


def test_fedasync_mixes_the_clients_model_with_staleness_weight() -> None:
    """a=0.5, s(tau) = 1/(1+tau). Clients a, b start from version 0; a arrives first (tau 0):
    w1 = 0.5 w0 + 0.5 (w0 + 1) = 0.5. Then b (tau 1, a_t = 0.25): w2 = 0.75 w1 + 0.25 (w0 + 2) = 0.875."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"])
    result = _driver("fedasync", transport, 2).run(BASE)
    np.testing.assert_allclose(result.weights["w"], 0.875, rtol=1e-6)
    assert [r.staleness_max for r in result.rounds] == [0, 1]
    assert result.extra["staleness_histogram"] == [{0: 1}, {1: 1}]


def test_fedbuff_steps_with_the_rule_over_the_buffer() -> None:
    """K = 2, mean rule: version 1 = mean(+1, +2) = 1.5 (both fresh)."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0}, ["c-2", "c-1"])
    result = _driver("fedbuff", transport, 1).run(BASE)
    np.testing.assert_allclose(result.weights["w"], 1.5, rtol=1e-6)
    assert result.rounds[0].round == 1 and result.rounds[0].rejected == 0


def test_future_and_unknown_versions_are_refused_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """c-1 names version 7 (the server sent 0): refused, counted, reason logged. The run goes on
    without it: c-2 (tau 0, a_t = 0.5): w1 = 0.5 * 0 + 0.5 * 2 = 1; c-3 (tau 1, a_t = 0.25):
    w2 = 0.75 * 1 + 0.25 * 3 = 1.5."""
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0, "c-3": 3.0}, ["c-1", "c-2", "c-3"], {"c-1": 7})
    with caplog.at_level("WARNING", logger="stamen.server"):
        result = _driver("fedasync", transport, 2, conc=3).run(BASE)
    assert [r.rejected for r in result.rounds] == [1, 0]
    assert "c-1: VersionMismatch: envelope names model version 7, the server sent 0" in caplog.text
    np.testing.assert_allclose(result.weights["w"], 1.5, rtol=1e-6)
    history = ModelHistory(max_versions=1)
    history.put(0, BASE), history.put(1, BASE)
    with pytest.raises(ValueError, match="version 0"):
        history.get(0)


def test_an_update_in_another_codec_than_asked_is_refused_undecoded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server asks for dense; c-1 answers in fedzip (a costly decoder): refused before its
    payload is decoded, counted, one line logged. Then as in the test above: w2 = 1.5."""
    decoded: list[str] = []
    dense_decode = CodecPipeline.decode

    def spy(pipeline: CodecPipeline, *args: object, **kwargs: object) -> object:
        decoded.append(pipeline.spec.to_string())
        return dense_decode(pipeline, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CodecPipeline, "decode", spy)
    codecs = {"c-1": "fedzip"}
    transport = ScriptedTransport({"c-1": 1.0, "c-2": 2.0, "c-3": 3.0}, ["c-1", "c-2", "c-3"], codecs=codecs)
    with caplog.at_level("WARNING", logger="stamen.server"):
        result = _driver("fedasync", transport, 2, conc=3).run(BASE)
    assert [r.rejected for r in result.rounds] == [1, 0] and decoded == ["dense", "dense"]
    assert "c-1: CodecMismatch: update is encoded with codec 'fedzip(" in caplog.text
    assert "the receiver asked for 'dense'\n" in caplog.text
    np.testing.assert_allclose(result.weights["w"], 1.5, rtol=1e-6)


class BatchTransport(ScriptedTransport):
    """Every reply waiting comes back in one pull, as Flower's grid returns them (in ``order``)."""

    def pull(self, timeout: float) -> list[Reply]:
        out: list[Reply] = []
        while self.sent and (reply := super().pull(timeout)):
            out += reply
        return out


FOUR = {"c-1": 1.0, "c-2": 2.0, "c-3": 3.0, "c-4": 4.0}


def test_a_batch_of_replies_releases_no_version_past_the_last(tmp_path: Path) -> None:
    """versions = 2, four clients in flight, one pull returns all four. FedAsync (a=0.5, s = 1/(1+tau)):
    w1 = 0.5 (c-1, tau 0), w2 = 0.75 * 0.5 + 0.25 * 2 = 0.875 (c-2, tau 1); c-3 and c-4 arrived after
    the end: not aggregated, counted. The checkpoint after each handled reply ends at version 2."""
    transport = BatchTransport(FOUR, list(FOUR))
    driver = _driver("fedasync", transport, 2, conc=4)
    driver.resume = RunState(tmp_path, {"run": "batch"}, "fedasync")
    result = driver.run(BASE)
    assert [r.round for r in result.rounds] == [1, 2] and driver.version == 2
    np.testing.assert_allclose(result.weights["w"], 0.875, rtol=1e-6)
    after = result.extra["after_end"]
    assert (after["replies"], after["in_flight"]) == (2, 0) and after["bytes_up"] > 0
    assert sum(r.bytes_up for r in result.rounds) == after["bytes_up"]  # 2 + 2 replies of one size
    ck = read_checkpoint(tmp_path)
    assert ck is not None and ck.finished and ck.step == 2 and len(ck.records) == 2


def test_fedbuff_batch_stops_at_the_last_version_and_counts_the_rest() -> None:
    """buffer 1, versions 2, s(tau) = 1/(1+tau): +1 (c-1, tau 0), then c-2's +2 at tau 1, scaled by
    s(1) = 0.5 (FedBuff scales each buffered update): w = 2; c-3, c-4 unused."""
    events: list[int] = []
    driver = _driver("fedbuff", BatchTransport(FOUR, list(FOUR)), 2, k=1, conc=4)
    driver.on_event = lambda: events.append(driver.version)
    result = driver.run(BASE)
    assert [r.round for r in result.rounds] == [1, 2] and events == [1, 2]
    np.testing.assert_allclose(result.weights["w"], 2.0, rtol=1e-6)
    assert result.extra["after_end"]["replies"] == 2


class WindowTransport(ScriptedTransport):
    """No client is ready until ``wait_ready`` (the next availability window) when ``opens``."""

    def __init__(self, opens: bool) -> None:
        super().__init__({"c-1": 1.0, "c-2": 2.0}, ["c-1", "c-2"] * 2)
        self.opens, self.open, self.waits = opens, False, 0

    def ready(self, client: str) -> bool:
        return self.open

    def pull(self, timeout: float) -> list[Reply]:
        self.order += [c for c in self.sent if c not in self.order]  # a client may go twice
        return super().pull(timeout)

    def wait_ready(self, eligible: object = None) -> bool:
        self.waits += 1
        self.open = self.opens
        return self.opens


def test_no_client_ready_waits_for_the_transport_then_refuses() -> None:
    """Nobody ready and nothing in flight: the driver waits once (the window opens) and runs;
    a transport where none will be ready ends in one clear error, not a loop."""
    transport = WindowTransport(opens=True)
    result = _driver("fedasync", transport, 2).run(BASE)
    assert [r.round for r in result.rounds] == [1, 2] and transport.waits == 1
    never = WindowTransport(opens=False)
    with pytest.raises(RuntimeError, match="no client is available to train"):
        _driver("fedasync", never, 2).run(BASE)
    assert never.waits == 1


def _plan(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("smoke", list(overrides)))


def test_fedbuff_with_buffer_and_concurrency_of_everyone_is_synchronous_fedavg() -> None:
    """k = concurrency = n and equal speeds: every update of version 1 is fresh, the buffer holds all
    four clients, and the step is round 1 of synchronous FedAvg (same seeds, float tolerance)."""
    sync = run_engine("inprocess", _plan("rounds=1"))
    args = ("rounds=1", "server.mode=fedbuff", "server.buffer_size=4", "server.concurrency=4", *EQUAL_SPEEDS)
    fedbuff = run_engine("inprocess", _plan(*args))
    for k, v in sync.weights.items():
        np.testing.assert_allclose(fedbuff.weights[k], v, rtol=1e-5, atol=1e-6)
    assert fedbuff.rounds[0].staleness_max == 0
    assert fedbuff.rounds[0].accuracy == pytest.approx(sync.rounds[0].accuracy, abs=0.01)


def test_virtual_clock_runs_are_deterministic_and_time_moves_forward() -> None:
    args = ("rounds=6", "server.mode=fedbuff", "server.buffer_size=2", "server.concurrency=4")
    a, b = run_engine("inprocess", _plan(*args)), run_engine("inprocess", _plan(*args))
    assert [r.to_dict() | {"wall_s": 0} for r in a.rounds] == [r.to_dict() | {"wall_s": 0} for r in b.rounds]
    times = [r.sim_time_s for r in a.rounds]
    assert all(t2 >= t1 for t1, t2 in itertools.pairwise(times)) and times[0] > 0
    assert max(r.staleness_max for r in a.rounds) >= 1  # concurrency 4 > buffer 2: stale updates
    assert model_hash(a.weights) == model_hash(b.weights)


def test_async_settings_are_checked_before_round_1() -> None:
    with pytest.raises(ValueError, match=r"fedasync.*aggregation\.rule"):
        _plan("server.mode=fedasync", "aggregation.rule=median")
    with pytest.raises(ValueError, match=r"staleness"):
        _plan("server.mode=fedbuff", "server.staleness=nope")
    with pytest.raises(ValueError, match="krum"):
        _plan(
            "server.mode=fedbuff",
            "server.buffer_size=3",
            "aggregation.rule=krum",
            "aggregation.assumed_byzantine=1",
        )


class LosingTransport(ScriptedTransport):
    """Every trip is lost: each task's reply is a timeout error (a run that cannot make progress).
    Gives up with an AssertionError after 100,000 replies, so the old unbounded loop fails here."""

    def __init__(self) -> None:
        super().__init__({"c-1": 1.0, "c-2": 1.0}, [])
        self.replied = 0

    def pull(self, timeout: float) -> list[Reply]:
        out = [Reply(c, error="no reply before the timeout") for c in self.sent]
        self.sent.clear()
        self.replied += len(out)
        assert self.replied < 100_000, "the driver loops on replies that bring nothing"
        return out


def test_a_run_whose_replies_never_bring_an_update_stops_and_says_so() -> None:
    transport = LosingTransport()
    result = _driver("fedbuff", transport, 3).run(BASE)
    assert result.stopped == "no usable replies" and result.rounds == []
    assert transport.replied == FRUITLESS_REPLIES  # concurrency 2: the base bound
