"""MkDocs hook: lay out ``stamen`` as Python imports it, so mkdocstrings can read the sources.

``pyproject.toml`` maps the top-level folders onto one package (``stamen.protocols`` lives in
``protocols/``, ...); griffe, which mkdocstrings uses to read docstrings without importing the code,
only finds sub-packages inside their parent's folder. Before the build this hook makes
``build/docs-api/stamen/`` with a symbolic link per entry of ``stamen/`` and one per mapped folder
(``build/docs-api/stamen/protocols -> ../../../protocols``); ``mkdocs.yml`` points the python
handler's ``paths`` there. Nothing is imported, nothing outside ``build/`` is written.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli ships with flwr)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
API_TREE = ROOT / "build" / "docs-api"


def package_dirs(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``[tool.setuptools] package-dir``: import name -> folder relative to the repository root."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return dict(config["tool"]["setuptools"]["package-dir"])


def build_api_tree(root: Path = ROOT, tree: Path = API_TREE) -> Path:
    """(Re)create ``tree/stamen`` as links into ``root`` and return ``tree``."""
    shutil.rmtree(tree, ignore_errors=True)
    mapping = package_dirs(root / "pyproject.toml")
    top = tree / "stamen"
    top.mkdir(parents=True)
    for entry in sorted((root / mapping.pop("stamen")).iterdir()):
        if entry.name != "__pycache__":
            os.symlink(os.path.relpath(entry, top), top / entry.name)
    for name, folder in sorted(mapping.items()):
        link = top.joinpath(*name.split(".")[1:])
        os.symlink(os.path.relpath(root / folder, link.parent), link)
    return tree


def on_startup(**kwargs: Any) -> None:
    """Called once by ``mkdocs build`` / ``mkdocs serve`` before the config is read."""
    build_api_tree()
