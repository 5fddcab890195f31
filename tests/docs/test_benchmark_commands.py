"""Every command in BENCHMARKS.md is valid as written (issue 14, item 2): each script it names
exists and accepts every option the command passes (its ``--help``), and each ``stamen simulate``
line loads. Running the benchmarks themselves takes minutes to hours each; the scripts' own quick
modes are run by tests/benchmarks/."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from docs_runner import make_env

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "BENCHMARKS.md").read_text()
_ARG = r"(?:--?[\w-]+(?:[ =](?!\.venv|--)[^\s`;#\]]+)?|\[[^\]]*\])"
_SCRIPT = re.compile(rf"benchmarks/(?P<script>\w+\.py)(?P<args>(?:[ \t]+{_ARG})*)")
_SIMULATE = re.compile(r"stamen simulate (?P<scenario>[\w.-]+)(?P<sets>(?:\s+--set\s+\S+)*)")


def script_options(text: str) -> dict[str, set[str]]:
    """``{script: {--option, ...}}`` for every ``benchmarks/<script>.py ...`` command in ``text``."""
    found: dict[str, set[str]] = defaultdict(set)
    for m in _SCRIPT.finditer(text):
        found[m["script"]] |= set(re.findall(r"--[\w-]+", m["args"]))
    return dict(found)


def test_parser_reads_commands_as_written() -> None:
    text = "run `.venv/bin/python benchmarks/b.py --jobs 2 --seeds 0,1` and benchmarks/c.py; --quick"
    assert script_options(text) == {"b.py": {"--jobs", "--seeds"}, "c.py": set()}


def test_every_named_script_exists() -> None:
    scripts = script_options(TEXT)
    assert len(scripts) >= 15
    missing = [s for s in scripts if not (ROOT / "benchmarks" / s).is_file()]
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("script", sorted(s for s, opts in script_options(TEXT).items() if opts))
def test_every_option_a_command_passes_is_accepted(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        cwd=ROOT,
        env=make_env(ROOT),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    unknown = sorted(o for o in script_options(TEXT)[script] if o not in proc.stdout)
    assert not unknown, f"{script} does not accept {unknown}"


def test_every_simulate_command_loads() -> None:
    from stamen.simulations.scenario import load_scenario

    commands = list(_SIMULATE.finditer(TEXT))
    assert commands
    for m in commands:
        load_scenario(m["scenario"], re.findall(r"--set\s+(\S+)", m["sets"]))
