"""Packaging: the top-level folders import as stamen.<folder> from an editable AND a normal install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"protocols", "task", "privacy", "server", "client", "edge", "simulations"}
CHECK = (
    "import importlib, stamen, sys\n"
    "mods = sys.argv[1].split(',')\n"
    "for m in mods: importlib.import_module(m)\n"
    "from stamen.simulations.scenario import builtin_scenarios\n"
    "names = [n for n, _ in builtin_scenarios()]\n"
    "assert 'demo' in names and 'smoke' in names, names\n"
    "print(stamen.__file__)\n"
)


def _packages_on_disk() -> set[str]:
    found = {"stamen"}
    for init in (ROOT / "stamen").rglob("*/__init__.py"):  # subpackages of stamen/ itself (stamen.deploy)
        found.add(".".join(["stamen", *init.parent.relative_to(ROOT / "stamen").parts]))
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join(["stamen", folder, *rel.parts]))
    return found


def test_every_package_folder_is_declared_in_pyproject() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == declared


@pytest.mark.slow
def test_editable_install_imports() -> None:
    mods = ",".join(sorted(_packages_on_disk()))
    out = subprocess.run(
        [sys.executable, "-c", CHECK, mods], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_normal_wheel_install_imports(tmp_path: Path) -> None:
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("stamen-*.whl"))
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    mods = ",".join(sorted(_packages_on_disk()))
    out = subprocess.run(
        [sys.executable, "-c", CHECK, mods], capture_output=True, text=True, cwd="/", env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target)), out.stdout  # the wheel, not the checkout
