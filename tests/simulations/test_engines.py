"""Both engines run the same trainer/codec/aggregator code: their results must agree."""

from __future__ import annotations

import math

import pytest

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


def _cfg(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("smoke", list(overrides)))


def test_inprocess_smoke_learns_and_is_reproducible() -> None:
    a = run_engine("inprocess", _cfg())
    b = run_engine("inprocess", _cfg())
    assert [r.accuracy for r in a.rounds] == [r.accuracy for r in b.rounds]
    assert a.rounds[-1].accuracy > 0.5  # 10 classes: chance is 0.1
    assert all(r.bytes_up > 0 and r.bytes_down > 0 and r.rejected == 0 for r in a.rounds)


def test_inprocess_codecs_change_bytes_not_correctness() -> None:
    dense = run_engine("inprocess", _cfg())
    sparse = run_engine("inprocess", _cfg("codec.pipeline=topk,int8", "codec.topk.ratio=0.1"))
    assert sparse.rounds[0].bytes_up < dense.rounds[0].bytes_up / 5
    assert sparse.rounds[0].bytes_down == dense.rounds[0].bytes_down
    assert not math.isnan(sparse.rounds[-1].accuracy)


def test_engine_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        run_engine("ray2", _cfg())


@pytest.mark.slow
def test_flower_engine_matches_inprocess_on_smoke() -> None:
    """Same seed: final accuracy within 0.01 and per-round bytes identical."""
    cfg = _cfg()
    fast = run_engine("inprocess", cfg)
    real = run_engine("flower", cfg)
    assert len(real.rounds) == len(fast.rounds) == cfg.cfg.rounds
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert [r.bytes_down for r in real.rounds] == [r.bytes_down for r in fast.rounds]
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01
    assert sum(r.rejected for r in real.rounds) == 0


@pytest.mark.slow
def test_flower_engine_partial_participation_samples_like_inprocess() -> None:
    """per_round < num_clients: the server maps partitions to nodes and samples the same cohort."""
    cfg = _cfg("data.num_clients=6", "clients.per_round=3", "rounds=2")
    fast = run_engine("inprocess", cfg)
    real = run_engine("flower", cfg)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01


def test_edge_runtime_mode_inprocess() -> None:
    """Devices hold the model in edge stores; the server ships signed deltas, not weights."""
    plain = run_engine("inprocess", _cfg("rounds=2"))
    edge = run_engine("inprocess", _cfg("rounds=2", "clients.runtime=edge"))
    assert [r.bytes_up for r in edge.rounds] == [r.bytes_up for r in plain.rounds]
    assert abs(edge.rounds[-1].accuracy - plain.rounds[-1].accuracy) <= 0.01
    lossy = run_engine(
        "inprocess",
        _cfg(
            "rounds=2",
            "clients.runtime=edge",
            "codec.downlink=int8",
            "data.num_clients=6",
            "clients.per_round=3",
        ),
    )
    assert all(r.rejected == 0 for r in lossy.rounds)  # device hashes tracked exactly by the server
    assert lossy.rounds[0].bytes_down < plain.rounds[0].bytes_down / 2


@pytest.mark.slow
def test_flower_engine_edge_runtime_matches_inprocess() -> None:
    cfg = _cfg("rounds=2", "clients.runtime=edge", "codec.downlink=int8")
    fast = run_engine("inprocess", cfg)
    real = run_engine("flower", cfg)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert [r.bytes_down for r in real.rounds] == [r.bytes_down for r in fast.rounds]
    assert sum(r.rejected for r in real.rounds) == 0
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01


@pytest.mark.slow
def test_flower_engine_matches_inprocess_under_attack() -> None:
    """Update attack + pre-aggregator + robust rule, and a data attack: same results on both engines."""
    for extra in (
        (
            "attack.kind=alie",
            "aggregation.pre=nnm",
            "aggregation.rule=multikrum",
            "aggregation.assumed_byzantine=1",
        ),
        ("attack.kind=label_flip", "aggregation.rule=median"),
    ):
        cfg = _cfg("rounds=2", "data.num_clients=6", "clients.per_round=6", "attack.fraction=0.34", *extra)
        fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
        assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
        assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01
