"""Sentences of the README (now in docs/) that had drifted from the code (issue 14), each checked
against the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_runner import parse_blocks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
SIMULATION = (ROOT / "docs" / "simulation.md").read_text()


def _paragraph(text: str, starting: str) -> str:
    start = text.index(starting)
    return text[start : (text + "\n\n").index("\n\n", start)]


def test_architecture_section_lists_every_rule_that_ships() -> None:
    from stamen.server.aggregators import available, available_pre

    bullet = _paragraph(ARCHITECTURE, "- **Aggregators**")
    for name in [*available(), *available_pre()]:
        assert f"`{name}`" in bullet, name


def test_scenario_list_names_every_builtin() -> None:
    from stamen.simulations.scenario import builtin_scenarios

    sentence = _paragraph(SIMULATION, "A scenario is a TOML file.")
    for name, _ in builtin_scenarios():
        assert f"`{name}`" in sentence, name


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    from stamen.simulations.scenario import load_scenario

    row = next(line for line in SIMULATION.splitlines() if line.startswith("| `name`, `description`"))
    assert "stem" in row and "custom" not in row
    (tmp_path / "my_run.toml").write_text("rounds = 1\n")
    assert load_scenario(str(tmp_path / "my_run.toml")).name == "my_run"


def test_minilm_tiny_is_not_offered_as_a_quick_run() -> None:
    """minilm-tiny (random init) trains to chance in minilm-lora's 4 rounds (0.10 on 10 classes)."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            assert not ("minilm-tiny" in line and "quick" in line), (doc.name, line)


RUFF = Path(sys.executable).parent / "ruff"  # a dev dependency, beside the interpreter


@pytest.mark.skipif(not RUFF.exists(), reason="needs ruff (pip install -e .[dev])")
def test_python_snippets_define_every_name(tmp_path: Path) -> None:
    """The MiniLM personalization snippet used `x, y` without defining them (ruff F821)."""
    pages = [ROOT / "README.md", ROOT / "docs" / "edge.md"]  # edge.md: the MiniLM snippet's home now
    snippets = [b for p in pages for b in parse_blocks(p.read_text(), p.name) if b.lang == "python"]
    assert snippets
    for block in snippets:
        path = tmp_path / f"snippet_{block.page}_{block.line}.py"
        path.write_text(block.code)
        proc = subprocess.run(
            [str(RUFF), "check", "--no-cache", "--isolated", "--select", "F821", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{block.page}:{block.line}\n{proc.stdout}"


def test_every_builtin_scenario_and_rule_appears_in_the_docs() -> None:
    from stamen.server.aggregators import available, available_pre
    from stamen.simulations.scenario import builtin_scenarios

    algorithms = (ROOT / "docs" / "algorithms.md").read_text()
    for name in [*available(), *available_pre()]:
        assert re.search(rf"`{name}`", algorithms), name
    simulation = (ROOT / "docs" / "simulation.md").read_text()
    for name, _ in builtin_scenarios():
        assert f"`{name}`" in simulation, name
