"""README.md: short, every command in it runs as pasted (quick variants where a directive says so),
every link resolves, and no guide overwrites Flower's own configuration (issue 14, items 2, 4, 8)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_runner import make_env, parse_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_is_the_pitch_the_commands_and_links() -> None:
    """The long content lives in docs/ (the site); the README stays one screenful or two. Other
    sections may be added (e.g. asynchronous federation, scale), each short."""
    assert len(README.splitlines()) <= 120
    assert "make demo" in README and "make test" in README
    for page in ("quickstart", "simulation", "deployment", "edge", "algorithms", "architecture"):
        assert f"(docs/{page}.md)" in README, page


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def test_make_demo_runs_what_the_readme_says() -> None:
    """The README's comment on `make demo` names the directory the Makefile's target writes."""
    make = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n\t(.*)$", make, re.M)
    assert demo is not None and "simulate demo --out runs/demo" in demo.group(1)
    assert "runs/demo/{results.json,results.csv,plot.png}" in README


def test_no_guide_overwrites_flowers_config() -> None:
    """`printf ... > $FLWR_HOME/config.toml` replaced Flower's config and broke a later
    `flwr run . local` ("SuperLink connection 'local' not found")."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            assert not re.search(r"[^>]>\s*\"?\$\{?FLWR_HOME\}?/config\.toml", line), f"{doc.name}:{n}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_commands_run_as_documented(tmp_path: Path) -> None:
    """Every runnable block of the README (`make demo`/`make test` are the Makefile's targets,
    checked above; they install into the repository's own .venv)."""
    blocks = parse_blocks(README, "README.md")
    assert run_blocks(blocks, tmp_path, make_env(ROOT), timeout_s=600) >= 1
