"""``stamen check-app``: a ``flwr run`` configuration is checked before the run (issue 14, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stamen.check_app import check_app, fused_run_config
from stamen.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_fuses_the_apps_defaults_with_overrides_as_flwr_run_does() -> None:
    fused = fused_run_config(ROOT, ['scenario="demo" overrides="rounds=2"', "timeout-s=30.0"])
    assert fused["scenario"] == "demo" and fused["overrides"] == "rounds=2"
    assert fused["timeout-s"] == 30.0
    assert fused["eval-data"] == "stamen.simulations.datasource:held_out"  # the pyproject default


def test_a_good_configuration_is_summarized() -> None:
    assert check_app(ROOT) == "ok: scenario 'smoke', 3 rounds, 4 of 4 clients a round, rule 'fedavg'"
    summary = check_app(ROOT, ['overrides="rounds=7 data.num_clients=10 clients.per_round=5"'])
    assert "7 rounds, 5 of 10 clients a round" in summary


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('scenario="nosuch"', "unknown scenario 'nosuch'"),
        (
            'overrides="aggregation.rule=krum aggregation.assumed_byzantine=1"',
            "krum needs 2*assumed_byzantine",
        ),
        ('overrides="attack.kind=alie"', "unknown key 'attack'"),  # simulation-only: a deployment refuses it
        ('overrides="clients.learning_rate=0.1"', "learning_rate"),
    ],
)
def test_what_the_serverapp_would_refuse_is_one_line_and_exit_2(
    config: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-app", str(ROOT), "-c", config]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_directory_without_an_app_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-app", str(tmp_path)]) == 2
    assert "no pyproject.toml" in capsys.readouterr().err
