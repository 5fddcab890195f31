"""What a user of an open-source project expects at the top of the tree: a license that matches
pyproject, a changelog in Keep a Changelog form, and a .gitignore that keeps `git status` clean after
the documented commands (and private keys out of the tree)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_is_the_full_apache_2_text_pyproject_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["license"] == "Apache-2.0" and PYPROJECT["license-files"] == ["LICENSE"]
    assert re.search(r"Apache License\s+Version 2\.0, January 2004", text)
    # the nine numbered sections of the terms, and their end
    for n, title in enumerate(
        [
            "Definitions",
            "Grant of Copyright License",
            "Grant of Patent License",
            "Redistribution",
            "Submission of Contributions",
            "Trademarks",
            "Disclaimer of Warranty",
            "Limitation of Liability",
            "Accepting Warranty or Additional Liability",
        ],
        start=1,
    ):
        assert f"{n}. {title}." in text, title
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text.split()) > 1500  # the full text (1,581 words), not a stub


_SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_changelog_follows_keep_a_changelog() -> None:
    lines = (ROOT / "CHANGELOG.md").read_text().splitlines()
    assert lines[0] == "# Changelog"
    assert any("keepachangelog.com" in line for line in lines[:8])
    releases = [line for line in lines if line.startswith("## ")]
    assert releases[0] == "## [Unreleased]"
    for line in releases[1:]:
        assert re.fullmatch(r"## \[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", line), line
    assert f"## [{PYPROJECT['version']}]" in "\n".join(releases)  # the current version is listed
    sections = {line[4:] for line in lines if line.startswith("### ")}
    assert sections and sections <= _SECTIONS, sections - _SECTIONS


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("edge-demo/keys/private.pem", True),  # the README's edge walkthrough
        ("edge-demo/update1.stamen", True),
        ("state.db", True),  # the deployment walkthrough's SuperLink database
        ("state.db-wal", True),
        ("state.db-shm", True),
        ("runs/demo-3f2a1c/results.json", True),
        ("keys/private.pem", True),  # `stamen keys generate --out keys` at the top
        ("somewhere/private.pem", True),
        ("update1.stamen", True),
        ("site/index.html", True),  # `make docs`
        (".flwr-home/config.toml", True),
        ("protocols/keys.py", False),  # sources stay visible
        ("docs/index.md", False),
        ("stamen/cli.py", False),
    ],
)
def test_gitignore_covers_generated_files(path: str, ignored: bool) -> None:
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode == (0 if ignored else 1), (path, proc.stderr)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_says_what_it_does(tmp_path: Path) -> None:
    """`make install` ran ~3 minutes with pip --quiet and printed nothing."""
    dry = subprocess.run(
        ["make", "-n", "install", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    steps = [line for line in dry if line.startswith('echo "==> [')]
    assert [s[len('echo "==> [') :][:3] for s in steps] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    big = [line for line in dry if "pip install" in line and ("torch==" in line or "-e " in line)]
    assert len(big) == 2 and not any("--quiet" in line or " -q" in line for line in big)
    assert any('-e ".[dev,docs]"' in line for line in big)  # the docs test runs under `make test`


def test_make_docs_builds_strictly() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "\ndocs: install\n\t$(VENV)/bin/mkdocs build --strict" in text
