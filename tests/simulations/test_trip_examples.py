"""The simulated compute time of a client under client-side DP comes from its partition size.

A private client reports ``num-examples = 1`` (its count is private); the timing model must still
charge it for the examples it trained on, not for one. Without client DP the reported count is used,
as before.
"""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import keys
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.engines.clock import TripMeter
from stamen.simulations.timing import ClientTiming, TimingConfig
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec


def _task(train: TrainSpec) -> TrainTask:
    instr = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), train)
    return TrainTask("client-2", instr, {"w": np.zeros(3, np.float32)}, None, "0" * 64)


def test_private_clients_are_timed_on_their_partition_size() -> None:
    timing = ClientTiming(TimingConfig(), 4, seed=0)
    meter = TripMeter(timing, 1, sizes=np.array([10, 20, 300, 40]))
    reply = Reply("client-2", envelope=b"x", metrics={keys.NUM_EXAMPLES: 1}, nbytes=1)
    assert meter.examples(2, reply, _task(TrainSpec(local_dp=True, client_dp=True))) == 300
    assert meter.examples(2, reply, _task(TrainSpec())) == 1  # not private: the reported count
    private, plain = _task(TrainSpec(client_dp=True)), _task(TrainSpec())
    trips = meter.trips([2, 2], 0.0, [reply, reply], [private, plain])  # no jitter by default
    assert trips[0].compute_s == pytest.approx(timing.compute_seconds(2, 300), rel=1e-12)
    assert trips[1].compute_s == pytest.approx(timing.compute_seconds(2, 1), rel=1e-12)
    one = meter.trip(2, 0.0, reply, private, meter.examples(2, reply, private))
    assert one.compute_s > 0 and one.compute_s == pytest.approx(timing.compute_seconds(2, 300), rel=1e-12)
