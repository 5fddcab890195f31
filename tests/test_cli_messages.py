"""What a user reads when a run is stopped or a command line is wrong: an interrupted async run says
what it keeps as a synchronous one does; async progress counts model versions; a hierarchy edge
rule's bad parameter and an argparse mistake are one line each."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stamen.cli import main
from stamen.server.history import ProgressFn, RoundRecord
from stamen.simulations.engines.inprocess import run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


def _stop_after(last: int) -> ProgressFn:
    def progress(rec: RoundRecord) -> None:
        if rec.round == last:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize(
    ("scenario", "overrides", "what"),
    [
        ("smoke", ["rounds=4"], "round"),
        ("async-speeds-quick", ["rounds=6"], "version"),
        ("async-speeds-quick", ["rounds=6", "server.mode=fedasync"], "version"),
    ],
)
def test_an_interrupted_run_says_what_it_keeps(
    scenario: str, overrides: list[str], what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C after the 2nd round (sync) or model version (fedbuff, fedasync): one warning naming
    the two it keeps (the async path said nothing)."""
    plan = SimulationPlan.from_scenario(load_scenario(scenario, overrides))
    with caplog.at_level(logging.WARNING, logger="stamen.server"):
        result = run_inprocess(plan, _stop_after(2))
    assert result.stopped == "interrupted" and len(result.rounds) == 2
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted")]
    assert said == [f"interrupted: keeping the 2 finished {what}(s)"]


@pytest.mark.parametrize(
    ("scenario", "unit"),
    [("smoke", "round"), ("async-speeds-quick", "version")],
)
def test_progress_lines_count_rounds_or_versions(
    scenario: str, unit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output that is not a terminal gets one line per finished round; an async run's lines count
    the model versions it releases (they said ``round``)."""
    assert main(["simulate", scenario, "--out", str(tmp_path), "--set", "rounds=2"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if " finished" in x]
    assert [x.split(" finished")[0] for x in lines] == [f"{unit} 1/2", f"{unit} 2/2"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["simulate", "smoke", "--bogus"], "unrecognized arguments: --bogus (see stamen simulate --help)"),
        (["simulate"], "the following arguments are required: scenario (see stamen simulate --help)"),
        (
            ["simulate", "smoke", "--out"],
            "argument --out: expected one argument (see stamen simulate --help)",
        ),
        (["edge", "init", "--model", "d"], "required: --trust (see stamen edge init --help)"),
        (["--bogus", "scenarios"], "unrecognized arguments: --bogus (see stamen --help)"),
        ([], "the following arguments are required: command (see stamen --help)"),
    ],
)
def test_a_command_line_mistake_is_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse printed its whole usage block before the error; now one line and where the help is,
    with exit code 2 as before."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("stamen: error: ") and err.endswith(f"{line}\n") and err.count("\n") == 1, err


def test_a_hierarchy_edge_rule_parameter_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The edge rule's bad parameter showed Python's TypeError text; now named with the rule and
    the parameters it accepts, as the top-level rule's are."""
    sets = ["mode=regions", "groups=2", "edge_rule=trimmed_mean", "trim_frac=0.1"]
    argv = ["simulate", "smoke", "--out", str(tmp_path)]
    for s in sets:
        argv += ["--set", f"aggregation.hierarchy.{s}"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "stamen: error: aggregation.hierarchy parameter(s) trim_frac not accepted by edge_rule"
        " 'trimmed_mean' (accepted: beta)\n"
    )
