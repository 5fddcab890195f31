"""The built-in FRL and Bristle scenarios run through the engines (short runs)."""

from __future__ import annotations

import pytest

from stamen.server.config import ServerConfig
from stamen.simulations.engines import run_engine
from stamen.simulations.scenario import load_scenario


def _cfg(name: str, *overrides: str) -> ServerConfig:
    return ServerConfig.from_scenario(load_scenario(name, list(overrides)))


def test_frl_learns_and_sends_packed_rankings() -> None:
    res = run_engine("inprocess", _cfg("frl", "rounds=3"))
    assert res.rounds[-1].accuracy > 0.5 and all(r.rejected == 0 for r in res.rounds)
    dense = run_engine("inprocess", _cfg("frl", "rounds=1", "codec.pipeline=dense"))
    assert res.rounds[0].bytes_up < dense.rounds[0].bytes_up / 2  # ceil(log2 n)-bit indices


def test_frl_rank_reversal_runs_and_server_lr_is_checked() -> None:
    res = run_engine("inprocess", _cfg("frl", "rounds=2", "attack.kind=rank_reversal", "attack.fraction=0.2"))
    assert len(res.rounds) == 2
    with pytest.raises(ValueError, match="server_lr"):
        run_engine("inprocess", _cfg("frl", "rounds=1", "aggregation.server_lr=0.5"))


def test_bristle_server_mode_runs_and_peer_mode_is_refused() -> None:
    res = run_engine("inprocess", _cfg("bristle", "rounds=2"))
    assert res.rounds[-1].accuracy > 0.2
    with pytest.raises(ValueError, match="peer"):
        run_engine("inprocess", _cfg("bristle", "rounds=1", "aggregation.mode=peer"))


@pytest.mark.slow
def test_frl_flower_matches_inprocess() -> None:
    cfg = _cfg("frl", "rounds=2", "data.num_clients=6", "clients.per_round=3")
    fast, real = run_engine("inprocess", cfg), run_engine("flower", cfg)
    assert [r.bytes_up for r in real.rounds] == [r.bytes_up for r in fast.rounds]
    assert abs(real.rounds[-1].accuracy - fast.rounds[-1].accuracy) <= 0.01
