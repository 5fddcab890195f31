"""The documentation: the site builds with ``--strict``, every page is in the navigation, and every
runnable code block of ``docs/*.md`` runs with the documented result (convention: docs_runner.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_runner import Block, apply_quick, bash_script, make_env, parse_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
SLOW_PAGES = {  # > 60 s on an idle 2-core machine
    "edge.md": "trains and exports two CNNs, personalizes on the device and a MiniLM",
    "quickstart.md": "four simulations, one of them `demo`",
    "simulation.md": "seven simulations, one under Flower's engine (Ray)",
}


OWN_TEST = {  # pages whose blocks a test of their own runs (with the services they need)
    "deployment.md": "tests/integration/test_deployment_guide.py (containers, docs-test markers)",
}


def _runnable_pages() -> list[object]:
    out: list[object] = []
    for page in (p for p in PAGES if p not in OWN_TEST):
        blocks = parse_blocks((DOCS / page).read_text(), page)
        if any(b.runnable for b in blocks):
            marks = [pytest.mark.slow] if page in SLOW_PAGES else []
            out.append(pytest.param(page, marks=marks, id=page))
    return out


# --- the runner itself: a checker that cannot fail would prove nothing ------------------------------

_PAGE = """\
Intro.

```bash
echo hello      # => hello
false           # => exit 1:
echo a \\
  b             # => a b
```

<!-- norun: would fail -->
```bash
exit 3
```

<!-- quick: rounds=40 => rounds=2 -->
```python
print("rounds=40")
```

```text
not run
```

- a list item
  ```bash
  echo indented
  ```
"""


def test_runner_parses_blocks_and_directives() -> None:
    blocks = parse_blocks(_PAGE, "p.md")
    assert [(b.line, b.lang, b.runnable) for b in blocks] == [
        (3, "bash", True),
        (11, "bash", False),
        (16, "python", True),
        (20, "text", False),
        (25, "bash", True),
    ]
    assert blocks[1].norun == "would fail"
    assert apply_quick(blocks[2]) == 'print("rounds=2")\n'
    assert blocks[4].code == "echo indented\n"


def test_runner_passes_and_fails_as_documented(tmp_path: Path) -> None:
    env = make_env(ROOT)
    assert run_blocks(parse_blocks(_PAGE, "p.md"), tmp_path, env, timeout_s=60) == 3
    for wrong in [
        "echo hello  # => bye",
        "false  # => exit 2:",
        "true  # => exit 1:",
        "false",
        "true\nexit 4",
    ]:
        with pytest.raises(AssertionError, match=r"p\.md:1: bash block exited"):
            run_blocks([Block("p.md", 1, "bash", wrong + "\n")], tmp_path, env, timeout_s=60)
    with pytest.raises(AssertionError, match="python block exited"):
        run_blocks([Block("p.md", 1, "python", "assert 1 == 2\n")], tmp_path, env, timeout_s=60)
    with pytest.raises(ValueError, match="matches nothing"):
        run_blocks([Block("p.md", 1, "bash", "true\n", quick=(("x", "y"),))], tmp_path, env, timeout_s=60)


def test_runner_leaves_heredocs_alone() -> None:
    script = bash_script("python - <<'EOF'\nprint(1)  # => 2\nEOF\necho x  # => x\n")
    assert "print(1)  # => 2\nEOF\n" in script and "grep -qF -- x" in script


def test_unknown_directive_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown directive"):
        parse_blocks("<!-- nrun: typo -->\n```bash\ntrue\n```\n")


# --- the site -----------------------------------------------------------------------------------------


def _nav_pages(nav: object) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_nav_pages(v) for v in nav))
    return set()


def test_every_page_is_in_the_navigation() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert _nav_pages(config["nav"]) == set(PAGES)
    assert {"index.md", "quickstart.md", "simulation.md", "edge.md", "algorithms.md", "benchmarks.md"} <= set(
        PAGES
    )
    assert {"testing.md", "deployment.md", "architecture.md"} <= set(PAGES)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    """``make docs`` = ``mkdocs build --strict``: a broken link, a missing page, an API object
    that no longer exists or a bad docstring fails the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=make_env(ROOT, {"NO_MKDOCS_2_WARNING": "1"}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    api = (site / "api" / "protocols" / "index.html").read_text()
    assert 'id="stamen.protocols.CodecSpec.parse"' in api  # mkdocstrings read the docstrings
    assert "topk,int8" in api  # ... as they are now
    bench = (site / "benchmarks" / "index.html").read_text()
    assert "Engine throughput" in bench  # BENCHMARKS.md is included
    assert "Keep a Changelog" in (site / "changelog" / "index.html").read_text()


# --- the pages' code -----------------------------------------------------------------------------------


@pytest.mark.timeout(3600)  # a page runs several simulations; minutes on a loaded 2-core machine
@pytest.mark.parametrize("page", _runnable_pages())
def test_page_code_blocks_run_as_documented(page: str, tmp_path: Path) -> None:
    blocks = parse_blocks((DOCS / page).read_text(), page)
    assert run_blocks(blocks, tmp_path, make_env(ROOT), timeout_s=1800) >= 1


def test_norun_blocks_say_why() -> None:
    for page in PAGES:
        for block in parse_blocks((DOCS / page).read_text(), page):
            if block.lang in ("bash", "python") and block.norun is not None:
                assert len(block.norun) >= 10, f"{page}:{block.line}: say why the block does not run"


def test_flower_environment_is_documented_in_full() -> None:
    """The README's export list had 4 of the Makefile's 8 variables (Ray's FutureWarning came
    through): every export line for `flwr run` lists them all."""
    make = dict(re.findall(r"^export (\w+) := (.*)$", (ROOT / "Makefile").read_text(), re.M))
    assert len(make) == 8
    for doc in (ROOT / "README.md", DOCS / "simulation.md"):
        text = doc.read_text().replace("\\\n", " ")
        exports = [line for line in text.splitlines() if line.lstrip().startswith("export FLWR_")]
        assert exports, doc
        for line in exports:
            assert set(re.findall(r"(\w+)=", line)) == set(make), (doc.name, line)
