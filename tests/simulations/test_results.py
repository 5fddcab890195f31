"""Results: summary by hand, strict JSON (no NaN), CSV, plot, atomic writes."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stamen.simulations.results import (
    ROUND_KEYS,
    RoundRecord,
    load_results,
    summarize,
    write_results,
)
from stamen.simulations.scenario import load_scenario

NAN = math.nan
ROUNDS = [
    RoundRecord(1, NAN, NAN, 1000, 4000, None, 0, 0.5),
    RoundRecord(2, 0.50, 1.5, 1000, 4000, 0.7, 1, 0.25),
    RoundRecord(3, 0.75, 0.9, 500, 4000, 1.1, 0, 0.25),
    RoundRecord(4, NAN, NAN, 500, 4000, None, 2, 1.0),
]


def _strict_json(text: str) -> object:
    def _reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=_reject)


def test_summarize_by_hand() -> None:
    final = summarize(ROUNDS)["final"]
    assert final == {
        "accuracy": 0.75,  # round 3: the last round that was evaluated
        "loss": 0.9,
        "bytes_up_total": 3000,
        "bytes_down_total": 16000,
        "epsilon": 1.1,  # round 3: the last round that reports epsilon
        "wall_s": 2.0,
        "sim_time_s": None,  # no simulated clock
    }


def test_summarize_without_rounds_or_evaluation() -> None:
    assert summarize([])["final"] == {
        "accuracy": None,
        "loss": None,
        "bytes_up_total": 0,
        "bytes_down_total": 0,
        "epsilon": None,
        "wall_s": 0.0,
        "sim_time_s": None,
    }
    assert summarize(ROUNDS[:1])["final"]["accuracy"] is None


def test_write_results_files(tmp_path: Path) -> None:
    scenario = load_scenario("smoke").to_dict()
    out = tmp_path / "runs" / "smoke"  # created with parents
    paths = write_results(out, scenario, ROUNDS, extra={"engine": "inprocess"})
    assert paths == {"json": out / "results.json", "csv": out / "results.csv", "plot": out / "plot.png"}
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "results.csv", "results.json"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = _strict_json(paths["json"].read_text())
    assert isinstance(doc, dict)
    assert list(doc) == ["scenario", "rounds", "final", "engine"]
    assert doc["scenario"] == scenario and doc["engine"] == "inprocess"
    assert doc["final"] == summarize(ROUNDS)["final"]
    assert doc["rounds"][0] == {
        "round": 1,
        "accuracy": None,
        "loss": None,
        "bytes_up": 1000,
        "bytes_down": 4000,
        "epsilon": None,
        "rejected": 0,
        "wall_s": 0.5,
        "sim_time_s": None,  # no client timing model
        "staleness_max": 0,
        "staleness_mean": None,
        "hier_regions": 0,  # a flat run
        "hier_bytes_root": 0,
        "hier_latency_edge_s": None,
        "hier_latency_root_s": None,
    }
    assert [list(r) for r in doc["rounds"]] == [list(ROUND_KEYS)] * 4
    assert load_results(out) == doc == load_results(paths["json"])


def test_csv_one_row_per_round(tmp_path: Path) -> None:
    paths = write_results(tmp_path, {"name": "t"}, ROUNDS)
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == list(ROUND_KEYS)
    assert rows[1] == ["1", "", "", "1000", "4000", "", "0", "0.5", "", "0", "", "0", "0", "", ""]
    assert rows[3] == ["3", "0.75", "0.9", "500", "4000", "1.1", "0", "0.25", "", "0", "", "0", "0", "", ""]
    assert len(rows) == 1 + len(ROUNDS)


def test_no_nan_anywhere_in_json(tmp_path: Path) -> None:
    scenario = {"name": "t", "weird": [np.float32(np.nan), np.int64(3), (1, math.inf)]}
    paths = write_results(tmp_path, scenario, ROUNDS, extra={"note": {"x": NAN}})
    text = paths["json"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = _strict_json(text)
    assert isinstance(doc, dict)
    assert doc["scenario"]["weird"] == [None, 3, [1, None]] and doc["note"] == {"x": None}


def test_other_record_types_and_numpy_numbers_are_normalized(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class EngineRecord:  # an engine's own record with the same fields
        round: Any
        accuracy: Any
        loss: Any
        bytes_up: Any
        bytes_down: Any
        epsilon: Any
        rejected: Any
        wall_s: Any

    rec = EngineRecord(1, np.float64(0.5), np.float32(0.25), np.int64(7), 8, None, 0, 0.125)
    paths = write_results(tmp_path, {"name": "t"}, [rec])
    row = list(csv.reader(paths["csv"].open()))[1]
    assert row == ["1", "0.5", "0.25", "7", "8", "", "0", "0.125", "", "0", "", "0", "0", "", ""]  # defaults
    assert load_results(tmp_path)["rounds"][0]["bytes_up"] == 7


def test_overwrites_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_results(tmp_path, {"name": "t"}, ROUNDS)
    write_results(tmp_path, {"name": "t"}, ROUNDS[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "results.csv", "results.json"]
    assert len(load_results(tmp_path)["rounds"]) == 2


def test_extra_may_not_shadow_reserved_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved keys"):
        write_results(tmp_path, {"name": "t"}, ROUNDS, extra={"final": 1})


def test_round_record_checks_and_normalizes() -> None:
    rec = RoundRecord(np.int64(2), None, np.float32(0.5), 1, 2, np.float64(0.3), 0, 1)
    assert type(rec.round) is int and math.isnan(rec.accuracy) and type(rec.loss) is float
    assert type(rec.epsilon) is float and type(rec.wall_s) is float
    with pytest.raises(ValueError, match="bytes_up must be an integer >= 0"):
        RoundRecord(1, 0.5, 0.5, -1, 0, None, 0, 0.0)
    with pytest.raises(ValueError, match="rejected must be an integer >= 0"):
        RoundRecord(1, 0.5, 0.5, 1, 0, None, 1.5, 0.0)
    with pytest.raises(ValueError, match="wall_s must be >= 0"):
        RoundRecord(1, 0.5, 0.5, 1, 0, None, 0, -1.0)


def _lines(ax: Any) -> dict[str, list[float]]:
    return {line.get_label(): [float(v) for v in line.get_ydata()] for line in ax.get_lines()}


def test_plot_separates_bytes_up_and_down() -> None:
    from stamen.simulations.results import plot_figure

    fig = plot_figure("t", [*ROUNDS[:3], RoundRecord(4, NAN, NAN, 500, 4000, 1.2, 2, 1.0)])
    ax_bytes = fig.axes[1]
    # cumulative MB by hand: up 1000, 2000, 2500, 3000 B; down 4000 B per round
    assert _lines(ax_bytes) == {
        "up (clients → server)": [0.001, 0.002, 0.0025, 0.003],
        "down (server → clients)": [0.004, 0.008, 0.012, 0.016],
    }
    assert ax_bytes.get_yscale() == "linear"  # within 100x of each other
    lopsided = [RoundRecord(1, 0.5, 0.5, 10, 10_000, None, 0, 1.0)]  # LoRA: full model down, adapters up
    assert plot_figure("t", lopsided).axes[1].get_yscale() == "log"


def test_plot_has_an_epsilon_panel_only_for_private_runs() -> None:
    from stamen.simulations.results import plot_figure

    private = plot_figure("dp", ROUNDS)
    assert len(private.axes) == 3
    # rounds 2 and 3 report epsilon (0.7, 1.1); rounds 1 and 4 do not
    line = private.axes[2].get_lines()[0]
    assert list(line.get_xdata()) == [2, 3] and list(line.get_ydata()) == [0.7, 1.1]
    assert "ε" in private.axes[2].get_ylabel()
    public = [RoundRecord(r.round, r.accuracy, r.loss, r.bytes_up, 0, None, 0, 1.0) for r in ROUNDS]
    assert len(plot_figure("plain", public).axes) == 2
    assert private.get_suptitle() == "dp"


def test_engine_is_recorded_once(tmp_path: Path) -> None:
    write_results(tmp_path, {"name": "t"}, ROUNDS, engine="flower-simulation", extra={"note": 1})
    doc = load_results(tmp_path)
    assert doc["engine"] == "flower-simulation" and doc["note"] == 1
    assert list(doc)[:4] == ["scenario", "rounds", "final", "engine"]
    with pytest.raises(ValueError, match="engine is given twice"):
        write_results(tmp_path, {"name": "t"}, ROUNDS, engine="inprocess", extra={"engine": "flower"})


def test_check_out_dir(tmp_path: Path) -> None:
    from stamen.simulations.results import check_out_dir

    check_out_dir(tmp_path)  # an existing directory
    check_out_dir(tmp_path / "a" / "b")  # created later by write_results
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing behind
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_out_dir(tmp_path / "f" / "run")
    with pytest.raises(ValueError, match="cannot write in '/proc'"):
        check_out_dir(Path("/proc/stamen-no/run"))


TIMED = [  # an async run: versions at simulated seconds 1.5, 2.0, 4.5; version 2 not evaluated
    RoundRecord(1, 0.2, 2.0, 10, 20, None, 0, 0.1, sim_time_s=1.5, staleness_max=0),
    RoundRecord(2, NAN, NAN, 10, 20, None, 0, 0.1, sim_time_s=2.0, staleness_max=3, staleness_mean=2.0),
    RoundRecord(3, 0.6, 1.0, 10, 20, None, 0, 0.1, sim_time_s=4.5, staleness_max=1, staleness_mean=1.0),
]


def test_plot_shows_accuracy_against_simulated_time_when_the_rounds_carry_a_clock() -> None:
    from stamen.simulations.results import plot_figure

    fig = plot_figure("async", TIMED)
    ax = fig.axes[2]  # after accuracy and bytes by round
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1.5, 4.5] and list(line.get_ydata()) == [0.2, 0.6]
    assert ax.get_xlabel() == "simulated time (s)"
    staleness = fig.axes[3].get_lines()[0]  # twin axis: max staleness per version, steps
    assert list(staleness.get_ydata()) == [0.0, 3.0, 1.0]
    assert len(plot_figure("no clock", ROUNDS[1:3]).axes) == 3  # private, no clock: no time panel
    assert summarize(TIMED)["final"]["sim_time_s"] == 4.5
