"""``stamen simulate scale-100k-quick``: 100,000 pooled clients through the CLI, peak RSS recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stamen.cli import main
from stamen.simulations.scenario import load_scenario

PARAMS = 40 * 64 + 64 + 64 * 10 + 10  # MLP 40-64-10: 3,274 float32 per dense update


@pytest.mark.slow
def test_scale_100k_quick_runs_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells in a narrower table
    out = tmp_path / "run"
    assert main(["simulate", "scale-100k-quick", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    data = res["scenario"]["data"]
    assert (data["num_clients"], data["partition"], data["samples_per_client"]) == (100_000, "pool", 40)
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    for r in res["rounds"]:  # 200 dense updates a round, each 4 bytes a parameter plus its envelope
        assert 200 * PARAMS * 4 < r["bytes_up"] < 200 * (PARAMS * 4 + 1500)
    assert math.isfinite(res["final"]["accuracy"]) and 0.1 < res["final"]["accuracy"] <= 1.0
    assert res["engine_path"]["training"] == "cohort-batched"
    assert 50 < res["engine_path"]["peak_rss_mib"] < 4096  # MiB: the interpreter, torch, one pool
    assert res["startup_s"]["plan"] > 0 and res["startup_s"]["first_round_done"] is not None
    assert "peak RSS" in capsys.readouterr().out


def test_scale_100k_settings() -> None:
    full, quick = load_scenario("scale-100k"), load_scenario("scale-100k-quick")
    assert full.data.num_clients == quick.data.num_clients == 100_000
    assert (full.clients.per_round, full.rounds, full.data.num_samples) == (1000, 10, 100_000)
    assert full.data.partition == quick.data.partition == "pool"
    assert full.engine.batching == quick.engine.batching == "on"


def test_summary_shows_the_peak_rss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells in a narrower table
    assert main(["simulate", "smoke", "--quiet", "--out", str(tmp_path), "--set", "rounds=1"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    shown = capsys.readouterr().out
    assert "peak RSS" in shown and f"{res['engine_path']['peak_rss_mib']:,.0f} MiB" in shown
    assert res["startup_s"]["plan"] > 0 and 0 < res["startup_s"]["first_round_done"] < res["total_wall_s"]
