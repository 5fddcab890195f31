"""The built-in MiniLM scenarios run on both engines (tiny transformer variant, so CI stays quick)."""

from __future__ import annotations

import pytest

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

TINY = [
    "model.name=minilm-tiny",
    "rounds=2",
    "data.num_samples=400",
    "data.num_clients=4",
    "clients.per_round=2",
]


def _cfg(name: str, *extra: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario(name, [*TINY, *extra]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "extra"), [("minilm-lora", ()), ("minilm-fedsb", ("lora.rank=16",)), ("minilm-sparse", ())]
)
def test_minilm_scenarios_inprocess(name: str, extra: tuple[str, ...]) -> None:
    res = run_engine("inprocess", _cfg(name, *extra))
    assert len(res.rounds) == 2 and all(r.rejected == 0 for r in res.rounds)
    full = run_engine(
        "inprocess",
        _cfg(
            name,
            *extra,
            "clients.trainer=full",
            "lora.adapter=none",
            "aggregation.rule=fedavg",
            "codec.pipeline=dense",
        ),
    )
    # parameter-efficient updates are far smaller than the dense full update
    assert res.rounds[0].bytes_up * 5 < full.rounds[0].bytes_up


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-lora", "minilm-fedsb"])
@pytest.mark.parametrize("mode", ["local", "dp_sgd"])
def test_client_dp_modes_compose_with_adapters(name: str, mode: str) -> None:
    """Local DP and DP-SGD run with LoRA / Fed-SB, report ε, and keep the update adapter-sized."""
    rank = ("lora.rank=16",) if name == "minilm-fedsb" else ()  # the tiny model is 32 wide
    plain = run_engine("inprocess", _cfg(name, *rank))
    res = run_engine("inprocess", _cfg(name, *rank, f"privacy.mode={mode}", "privacy.target_epsilon=8"))
    assert all(r.epsilon is not None and 0 < r.epsilon <= 8 * 1.01 for r in res.rounds)
    assert res.rounds[0].bytes_up == plain.rounds[0].bytes_up  # noise only where the update was


@pytest.mark.slow
def test_minilm_lora_flower_matches_inprocess() -> None:
    cfg = _cfg("minilm-lora")
    fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    # the cached downlink (auto for LoRA): the same patches through Flower's records and context.state
    assert [r.bytes_down for r in real.rounds] == [r.bytes_down for r in fast.rounds]
    assert real.rounds[0].bytes_down == 0 < real.rounds[-1].bytes_down  # round 1: the clients' own build
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01
