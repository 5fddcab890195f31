"""Which clients are inside an availability window, found at once: ``windows_open`` equals the
scalar ``ClientTiming.available`` for every client (at window edges too), and the asynchronous
driver's draw, narrowed to those clients, gives the very run the full scan gave."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stamen.server.checkpoint import records_equal
from stamen.server.driver import async_driver
from stamen.simulations.engines import inprocess, run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.simulations.timing import ClientTiming, TimingConfig

WINDOWS = {
    "onoff": {"availability": "onoff", "mean_on_s": 60.0, "mean_off_s": 600.0},
    "diurnal": {"availability": "diurnal", "diurnal_on_hours": 1.0, "diurnal_spread_hours": 12.0},
    "always": {"availability": "always"},
}


def _times(t: ClientTiming, rng: np.random.Generator) -> list[float]:
    """Random instants, and every client's window edges (and the floats beside them) in 3 periods."""
    times = list(rng.uniform(0.0, 3 * 86_400.0, 200))
    finite = np.isfinite(t.period)
    if not finite.any():
        return times
    for k in range(3):
        for edge in (t.phase + k * t.period, t.phase + k * t.period + t.on_len):
            for x in edge[finite][:40]:
                times += [float(x), float(np.nextafter(x, -np.inf)), float(np.nextafter(x, np.inf))]
    return times


@pytest.mark.parametrize("kind", sorted(WINDOWS))
def test_the_mask_is_the_scalar_answer_for_every_client(kind: str) -> None:
    timing = ClientTiming(TimingConfig.from_dict(WINDOWS[kind]), 300, seed=3)
    for time in _times(timing, np.random.default_rng(0)):
        scalar = [timing.available(i, time) for i in range(300)]
        assert timing.available_mask(time).tolist() == scalar, time


def _run(overrides: list[str], narrowed: bool) -> tuple[Any, int]:
    """A windowed asynchronous run, with the transport's ready_indices or without (the full scan),
    and how many times the driver asked whether a client is idle."""
    plan = SimulationPlan.from_scenario(load_scenario("async-speeds-quick", overrides))
    asked = [0]
    idle = async_driver.AsyncDriver._idle

    def counted(self: Any, client: str) -> bool:
        asked[0] += 1
        return idle(self, client)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(async_driver.AsyncDriver, "_idle", counted)
        if not narrowed:
            mp.setattr(inprocess.VirtualClockTransport, "ready_indices", lambda self, clients: None)
        return run_engine("inprocess", plan), asked[0]


@pytest.mark.parametrize("mode", ["fedbuff", "fedasync"])
def test_the_narrowed_draw_gives_the_scanned_run(mode: str) -> None:
    overrides = [
        f"server.mode={mode}",
        "data.num_clients=200",
        "timing.availability=diurnal",
        "timing.diurnal_on_hours=1",
        "timing.diurnal_spread_hours=24",
        "timing.seconds_per_example=1.0",
        "rounds=8",
    ]
    narrowed, asked_narrowed = _run(overrides, narrowed=True)
    scanned, asked_scanned = _run(overrides, narrowed=False)
    assert records_equal(narrowed.rounds, scanned.rounds)
    for name, w in scanned.weights.items():
        np.testing.assert_array_equal(narrowed.weights[name], w)
    assert asked_narrowed < asked_scanned / 2  # the scans did happen, and were narrowed
