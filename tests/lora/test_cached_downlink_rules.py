"""The cached downlink is exact for every parameter-efficient rule: a run with it ends with the very
same model (bit for bit), updates and accuracy as with the full model every round, for fewer bytes."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

TINY = [
    "model.name=minilm-tiny",
    "rounds=3",
    "data.num_samples=300",
    "data.num_clients=3",
    "clients.per_round=2",
]
CASES = {
    "lora_exact": ("minilm-lora", ()),  # the FedEx-LoRA residual changes the adapted base weights
    "lora_naive": ("minilm-lora", ("aggregation.rule=lora_naive",)),
    "fedsb": ("minilm-fedsb", ("lora.rank=16",)),
    "sparse": ("minilm-sparse", ()),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_downlink_equals_the_full_downlink(case: str) -> None:
    name, extra = CASES[case]
    runs = {
        mode: run_engine(
            "inprocess",
            SimulationPlan.from_scenario(load_scenario(name, [*TINY, *extra, f"clients.downlink={mode}"])),
        )
        for mode in ("full", "cached")
    }
    full, cached = runs["full"], runs["cached"]
    assert all(full.weights[k].tobytes() == cached.weights[k].tobytes() for k in full.weights)
    assert [r.bytes_up for r in cached.rounds] == [r.bytes_up for r in full.rounds]
    assert [r.rejected for r in cached.rounds] == [0, 0, 0]
    np.testing.assert_array_equal([r.loss for r in cached.rounds], [r.loss for r in full.rounds])
    # round 1: every client builds the pretrained model itself; only Fed-SB's data-initialized
    # factors differ from that build
    assert cached.rounds[0].bytes_down < 0.01 * full.rounds[0].bytes_down
    assert (cached.rounds[0].bytes_down == 0) == (case != "fedsb")
    assert sum(r.bytes_down for r in cached.rounds) < 0.1 * sum(r.bytes_down for r in full.rounds)
