"""The user-facing CLI: scenarios, simulate (results files), clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stamen.cli import main


def test_scenarios_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "smoke" in out


def test_simulate_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "smoke", "--quiet", "--out", str(out), "--set", "rounds=2"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    assert set(res["rounds"][0]) >= {
        "round",
        "accuracy",
        "loss",
        "bytes_up",
        "bytes_down",
        "epsilon",
        "rejected",
        "wall_s",
    }
    assert res["final"]["bytes_up_total"] == sum(r["bytes_up"] for r in res["rounds"])
    assert res["scenario"]["rounds"] == 2
    assert (out / "results.csv").read_text().count("\n") >= 3
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["simulate", "no-such-scenario"], "no-such-scenario"),
        (["simulate", "smoke", "--set", "clients.lrr=1"], "clients.lrr"),
        (["simulate", "smoke", "--set", "codec.pipeline=nope"], "nope"),
    ],
)
def test_errors_are_one_clear_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stamen: error:") and needle in err and "\n" not in err


def test_unknown_attack_fails_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    """An attack kind no registry knows must be refused, never silently ignored."""
    argv = ["simulate", "smoke", "--quiet", "--set", "attack.kind=nope", "--set", "attack.fraction=0.2"]
    assert main(argv) == 2
    assert "nope" in capsys.readouterr().err
