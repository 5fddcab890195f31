"""The built-in FRL and Bristle scenarios run through the engines (short runs)."""

from __future__ import annotations

import pytest

from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


def _cfg(name: str, *overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario(name, list(overrides)))


@pytest.mark.slow
def test_frl_learns_and_sends_packed_rankings() -> None:
    res = run_engine("inprocess", _cfg("frl", "rounds=3"))
    assert res.rounds[-1].accuracy > 0.5 and all(r.rejected == 0 for r in res.rounds)
    dense = run_engine("inprocess", _cfg("frl", "rounds=1", "codec.pipeline=dense"))
    assert res.rounds[0].bytes_up < dense.rounds[0].bytes_up / 2  # ceil(log2 n)-bit indices


@pytest.mark.slow
def test_frl_rank_reversal_runs_and_server_lr_is_checked() -> None:
    res = run_engine("inprocess", _cfg("frl", "rounds=2", "attack.kind=rank_reversal", "attack.fraction=0.2"))
    assert len(res.rounds) == 2
    with pytest.raises(ValueError, match="server_lr"):
        run_engine("inprocess", _cfg("frl", "rounds=1", "aggregation.server_lr=0.5"))


@pytest.mark.slow
def test_bristle_server_mode_runs() -> None:
    res = run_engine("inprocess", _cfg("bristle", "rounds=2"))
    assert res.rounds[-1].accuracy > 0.2


@pytest.mark.slow
def test_frl_flower_matches_inprocess() -> None:
    cfg = _cfg("frl", "rounds=2", "data.num_clients=6", "clients.per_round=3")
    fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01


@pytest.mark.slow
def test_bristle_peer_mode_flower_matches_inprocess() -> None:
    """Peer mode (the server relays inboxes, clients keep cw/tw in context.state) under the scenario's
    label flip, under an update attack, and with 5 of 10 nodes per round: both engines give the same
    per-round results."""
    for extra in (
        (),
        ("attack.kind=sign_flip", "aggregation.num_closest=3", "aggregation.num_random=2"),
        ("clients.per_round=5",),
    ):  # partial participation: inboxes hold last round's senders
        cfg = _cfg("bristle", "rounds=3", "aggregation.mode=peer", *extra)
        fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
        assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
        assert [r.bytes_down for r in real.rounds] == [r.bytes_down for r in fast.rounds]
        assert [r.accuracy for r in real.rounds] == pytest.approx([r.accuracy for r in fast.rounds], abs=1e-9)
        same = {k: v for k, v in fast.extra.items() if k != "engine_path"}  # in-process only: its path, RSS
        assert real.extra == same and sum(r.rejected for r in real.rounds) == 0
