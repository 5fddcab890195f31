"""The layers hold: the deployable apps load no simulation code, wire keys live in one module.

(The full import contract is import-linter's, run by ``make lint``; these tests pin what a user
relies on and run in ``make test``.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stamen.protocols import keys

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("protocols", "task", "privacy", "server", "client", "edge", "simulations", "stamen")


def _loaded_after(module: str) -> list[str]:
    listing = "sorted(m for m in sys.modules if m.startswith('stamen'))"
    code = f"import json, sys, {module}; print(json.dumps({listing}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    ("app", "forbidden"),
    [
        ("stamen.server.app", ("stamen.simulations", "stamen.client", "stamen.edge")),
        ("stamen.client.app", ("stamen.simulations", "stamen.server")),
    ],
)
def test_deployable_apps_load_no_simulation_code(app: str, forbidden: tuple[str, ...]) -> None:
    loaded = _loaded_after(app)
    assert app in loaded
    leaked = [m for m in loaded if m.startswith(forbidden)]
    assert leaked == [], f"{app} loads {leaked}"


def _wire_literals(path: Path, distinct: set[str], words: set[str]) -> list[str]:
    """String constants equal to a wire key: distinctive ones anywhere (not in docstrings), plain
    words (``epsilon``, ``config``, ...) where client or driver code uses them as dict/record keys."""
    rel = path.relative_to(ROOT)
    tree = ast.parse(path.read_text())
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    keyed = rel.parts[0] == "client" or rel.parts[:2] == ("server", "driver")
    found = []
    for node in ast.walk(tree):
        literal = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        if literal and node.value in distinct:  # type: ignore[attr-defined]
            found.append(f"{rel}:{node.lineno}: {node.value!r}")  # type: ignore[attr-defined]
        if keyed and isinstance(node, ast.Dict | ast.Subscript):
            cands = node.keys if isinstance(node, ast.Dict) else [node.slice]
            found += [
                f"{rel}:{c.lineno}: {c.value!r}"
                for c in cands
                if isinstance(c, ast.Constant) and c.value in words
            ]
    return found


def test_wire_keys_are_never_spelled_outside_protocols_keys() -> None:
    wire = {v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str)}
    distinct = {v for v in wire if any(c in v for c in "-./")}
    words = wire - distinct
    assert {"num-examples", "train-loss", "server-round", "bristle.inbox"} <= distinct and "epsilon" in words
    found = [
        hit
        for folder in SOURCES
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "protocols" / "keys.py"
        for hit in _wire_literals(path, distinct, words)
    ]
    assert found == []


def test_the_check_catches_a_literal(tmp_path: Path) -> None:
    """The scan is not vacuous: a planted literal in client code is found."""
    planted = ROOT / "client" / "_planted_wire_literal_test.py"
    planted.write_text('METRICS = {"epsilon": 1.0, "x": "num-examples"}\n')
    try:
        wire = {v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str)}
        distinct = {v for v in wire if any(c in v for c in "-./")}
        hits = _wire_literals(planted, distinct, wire - distinct)
    finally:
        planted.unlink()
    assert len(hits) == 2
