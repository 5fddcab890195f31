"""The user-facing CLI: scenarios, simulate (results files), clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        (["simulate", "smoke", "--set", "name=../../escape"], "plain directory name"),
        (["simulate", "smoke", "--set", "name=/abs"], "plain directory name"),
        (["simulate", "smoke", "--set", "model.name=minilm"], "does not fit data.dataset='digits'"),
        (["simulate", "smoke", "--set", "data.dataset=pydocs"], "needs a text model"),
    ],
)
def test_errors_are_one_clear_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stamen: error:") and needle in err and "\n" not in err


def test_more_mistakes_are_one_line_naming_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory for a scenario, a file that is not UTF-8, an attack parameter its attack does not
    take (checked even when the cohort has no attacker), a run config value that is not a number."""
    (tmp_path / "bad.toml").write_bytes(b'name = "x"\n\xff\n')
    attack = ["--set", "attack.kind=scaling", "--set", "attack.fraction=0.2", "--set", "attack.bogus=3"]
    cases = {
        "is a directory, not a TOML file": ["simulate", str(tmp_path)],
        "is not UTF-8 text": ["simulate", str(tmp_path / "bad.toml")],
        "attack 'scaling' (bogus); it takes: scale": ["simulate", "smoke", *attack],
        "timeout-s must be a number of seconds, got 'abc'": ["check-app", ".", "-c", 'timeout-s="abc"'],
    }
    for needle, argv in cases.items():
        assert main([*argv, "--quiet"] if argv[0] == "simulate" else argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("stamen: error:") and needle in err and "\n" not in err


def test_unknown_attack_fails_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    """An attack kind no registry knows must be refused, never silently ignored."""
    argv = ["simulate", "smoke", "--quiet", "--set", "attack.kind=nope", "--set", "attack.fraction=0.2"]
    assert main(argv) == 2
    assert "nope" in capsys.readouterr().err


# --- issue 14: a newcomer's first hour -------------------------------------------------------------

_NO_HEAVY_IMPORTS = """
import contextlib, io, sys
from stamen.cli import main
cases = {cases!r}
for argv in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    print(rc, repr(err.getvalue().strip()))
print("heavy:", sorted(m for m in ("torch", "flwr", "ray", "matplotlib") if m in sys.modules))
"""


def test_argument_errors_answer_without_importing_torch_or_flwr(tmp_path: Path) -> None:
    """``--help``, ``scenarios`` and every error in a ``simulate`` command line are found before
    the engine stack (torch 2 s, flwr + ray 1.5 s) is imported: they answer in well under a second."""
    existing = tmp_path / "file.txt"
    existing.write_text("x")
    cases = [
        ["--help"],
        ["scenarios"],
        ["simulate", "no-such-scenario"],
        ["simulate", "smoke", "--set", "clients.lrr=1"],
        ["simulate", "smoke", "--set", "clients.lr=fast"],
        ["simulate", "smoke", "--set", "codec.pipeline=nope"],
        ["simulate", "smoke", "--set", "aggregation.rule=nope"],
        ["simulate", "smoke", "--set", "attack.kind=nope", "--set", "attack.fraction=0.2"],
        ["simulate", "smoke", "--out", str(existing)],
        ["simulate", "smoke", "--out", "  "],
        ["simulate", "smoke", "--set", "name=../escape"],
        ["simulate", "smoke", "--set", "model.name=minilm"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _NO_HEAVY_IMPORTS.format(cases=cases)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "heavy: []", proc.stdout
    codes = [int(line.split(" ", 1)[0]) for line in lines[:-1]]
    assert codes == [0, 0] + [2] * (len(cases) - 2), proc.stdout


@pytest.mark.parametrize("kind", ["existing file", "below a file", "unwritable"])
def test_bad_out_is_refused_before_round_1(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stamen.simulations.engines as engines

    def _must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started although --out is unusable")

    monkeypatch.setattr(engines, "run_engine", _must_not_run)
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    out = {
        "existing file": existing,
        "below a file": existing / "run",
        "unwritable": Path("/proc/stamen-cannot-write-here/run"),
    }[kind]
    assert main(["simulate", "smoke", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stamen: error: output directory") and str(out) in err and "\n" not in err
    assert existing.read_text() == "keep me"


def test_default_out_dir_is_per_override_set() -> None:
    from stamen.cli import default_out_dir

    assert default_out_dir("demo", []) == Path("runs/demo")  # `make demo` and `stamen simulate demo`
    a = default_out_dir("demo", ["rounds=20", "codec.pipeline=topk,int8"])
    assert a.parent == Path("runs") and a.name.startswith("demo-") and len(a.name) == len("demo-") + 6
    # same overrides, other order or spelling of the same values: same directory
    assert default_out_dir("demo", ["codec.pipeline=topk, int8", "rounds=20"]) == a
    assert default_out_dir("demo", ["clients.lr=0.10"]) == default_out_dir("demo", ["clients.lr=0.1"])
    # different overrides: different directories
    assert default_out_dir("demo", ["rounds=21", "codec.pipeline=topk,int8"]) != a
    assert default_out_dir("demo", ["rounds=5"]) == Path("runs/demo-a2d11b")  # sha256('{"rounds": 5}')[:6]
    # the other engine never overwrites the in-process results
    assert default_out_dir("demo", [], "flower") == Path("runs/demo-flower")
    assert default_out_dir("demo", ["rounds=5"], "flower") == Path("runs/demo-flower-a2d11b")
    # [attack] is a scenario section: the README's robust-aggregation example has no --out
    b = default_out_dir("smoke", ["attack.kind=alie", "attack.fraction=0.25"])
    assert b.name.startswith("smoke-") and b != default_out_dir("smoke", ["attack.kind=ipm"])


def test_runs_with_different_overrides_keep_their_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stamen.simulations.results as results

    titles: list[str] = []
    real_plot = results.plot_figure

    def _plot(title: str, rounds: Any) -> Any:
        titles.append(title)
        return real_plot(title, rounds)

    monkeypatch.setattr(results, "plot_figure", _plot)
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "smoke", "--quiet", "--set", "rounds=1"]) == 0
    assert main(["simulate", "smoke", "--quiet", "--set", "rounds=2", "--set", "clients.lr=0.1"]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(p.name.startswith("smoke-") for p in runs)
    assert sorted(len(json.loads((p / "results.json").read_text())["rounds"]) for p in runs) == [1, 2]
    assert titles == ["smoke rounds=1", "smoke rounds=2 clients.lr=0.1"]  # the plot says what ran
    doc = json.loads((tmp_path / "runs" / runs[0].name / "results.json").read_text())
    assert doc["engine"] == "inprocess" and doc["overrides"] in (["rounds=1"], ["rounds=2", "clients.lr=0.1"])


def test_a_run_that_replaces_earlier_results_says_so_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "smoke", "--quiet", "--set", "rounds=1"]) == 0
    assert "replaces" not in capsys.readouterr().err
    assert main(["simulate", "smoke", "--quiet", "--set", "rounds=1"]) == 0
    err = capsys.readouterr().err
    assert "holds an earlier run's results; this run replaces them" in err and "runs/smoke-" in err


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        (["aggregation.rule=krum", "aggregation.assumed_byzantine=1"], "aggregation krum"),
        (["engine.batching=on", "clients.trainer=dp_sgd"], "engine.batching='on'"),
        (["engine.threads=2", "engine.workers=2"], "engine.threads=2"),
    ],
)
def test_a_refused_run_does_not_say_it_replaces_earlier_results(
    overrides: list[str], start: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before round 1 (by the plan, by the engine's path): one error line, and no claim that
    the run replaces the results it leaves alone."""
    out = tmp_path / "run"
    assert main(["simulate", "smoke", "--quiet", "--out", str(out), "--set", "rounds=1"]) == 0
    capsys.readouterr()
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main(["simulate", "smoke", "--quiet", "--out", str(out), *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stamen: error: {start}"), err


def test_state_dir_mistakes_are_refused_before_the_data_set_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--state-dir with the Flower engine, or below a file: refused before the plan (which loads the
    data set: scale-100k's first run generates it for tens of seconds)."""
    from stamen.simulations.plan import SimulationPlan

    def no_plan(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the plan was built for a refused command line")

    monkeypatch.setattr(SimulationPlan, "from_scenario", no_plan)
    (tmp_path / "a-file").write_text("x")
    base = ["simulate", "smoke", "--quiet", "--out", str(tmp_path / "o")]
    for extra, needle in (
        (
            ["--engine", "flower", "--state-dir", str(tmp_path / "sd")],
            "--state-dir works with --engine inprocess",
        ),
        (["--state-dir", str(tmp_path / "a-file" / "sd")], "is a file, not a directory"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_an_interrupt_before_any_round_keeps_the_earlier_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C before round 1 finished: nothing to keep, so nothing is written over the last run."""
    import stamen.simulations.engines as engines
    from stamen.server.history import FederationResult

    out = tmp_path / "run"
    assert main(["simulate", "smoke", "--quiet", "--out", str(out), "--set", "rounds=1"]) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()

    def interrupted(*args: Any, **kwargs: Any) -> FederationResult:
        return FederationResult(rounds=[], weights={}, stopped="interrupted")

    monkeypatch.setattr(engines, "run_engine", interrupted)
    assert main(["simulate", "smoke", "--quiet", "--out", str(out), "--set", "rounds=1"]) == 130
    assert "interrupted before a round finished; nothing written" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


def test_summary_wall_time_is_final_wall_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table printed the whole command's time (data loading, model building, engine start
    included) while results.json's final.wall_s sums the rounds: now both say the same."""
    from types import SimpleNamespace

    import stamen.simulations.engines as engines
    from stamen.server.history import RoundRecord

    rounds = [RoundRecord(r, 0.5, 1.0, 10, 20, None, 0, 1.25) for r in (1, 2)]
    monkeypatch.setattr(
        engines, "run_engine", lambda *a, **k: SimpleNamespace(rounds=rounds, extra={}, stopped=None)
    )
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["simulate", "smoke", "--quiet", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["final"]["wall_s"] == 2.5
    table = capsys.readouterr().out
    assert "2.5 s" in table  # the fake engine took ~0 s: the old table printed "0.0 s"


def test_edge_commands_never_vanish_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken ``stamen.cli_edge`` import used to drop keys/delta/edge without a word."""
    import stamen

    monkeypatch.delattr(stamen, "cli_edge", raising=False)
    monkeypatch.setitem(sys.modules, "stamen.cli_edge", None)  # makes the import fail
    with pytest.raises(ImportError):
        main(["--help"])


def test_edge_commands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("simulate", "scenarios", "keys", "delta", "edge"))


def test_python_dash_m_stamen_is_the_command() -> None:
    """``python -m stamen`` runs the CLI (where the ``stamen`` script is not on PATH)."""
    import stamen

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "stamen", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    done = run("--version")
    assert done.returncode == 0 and stamen.__version__ in done.stdout + done.stderr
    done = run("simulate", "no-such-scenario")
    assert done.returncode == 2 and "unknown scenario 'no-such-scenario'" in done.stderr
