"""Build the container build context: a wheelhouse with the stamen wheel and every role's dependencies.

    python deploy/scripts/wheelhouse.py [OUT]        (default OUT: deploy/build; `make wheelhouse`)

Writes ``OUT/stamen/stamen-<version>-py3-none-any.whl`` (built from this checkout, no dependencies;
a folder of its own so that a change to stamen does not invalidate the image layer of the
dependencies) and ``OUT/wheels/`` with

* ``requirements-<role>.txt`` for each role: the ``[project.optional-dependencies]`` extra of that
  name in pyproject.toml (``superlink``, ``server``, ``device``);
* ``constraints.txt``: ``name==version`` of every distribution in the running environment, so the
  images get exactly the versions the test suite ran with (torch stays the local ``+cpu`` build);
* the binary wheels of all of them (``pip download --only-binary=:all:``), for the running
  interpreter's Python version and platform: build on the same architecture as the image.

The Dockerfile installs with ``pip install --no-index --find-links /wheels``: no network in the build.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("superlink", "server", "device")


def role_requirements(pyproject: Path) -> dict[str, list[str]]:
    """The requirement lines of each role's extra; a missing extra raises ``ValueError``."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    missing = [r for r in ROLES if r not in extras]
    if missing:
        raise ValueError(f"{pyproject}: no [project.optional-dependencies] for {missing}")
    return {role: list(extras[role]) for role in ROLES}


def environment_constraints(skip: frozenset[str] = frozenset({"stamen"})) -> list[str]:
    """``name==version`` for every installed distribution except ``skip`` (sorted, one per name)."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in skip:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=1800)


def build(out: Path) -> Path:
    """Fill ``out/wheels`` (see the module docs); returns that folder."""
    wheels, own = out / "wheels", out / "stamen"
    for folder in (wheels, own):
        folder.mkdir(parents=True, exist_ok=True)
    for old in [*own.glob("stamen-*.whl"), *wheels.glob("stamen-*.whl")]:
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(own), str(ROOT)])
    (wheels / "constraints.txt").write_text("\n".join(environment_constraints()) + "\n")
    for role, reqs in role_requirements(ROOT / "pyproject.toml").items():
        req_file = wheels / f"requirements-{role}.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        download = ["download", "-q", "--only-binary=:all:", "-d", str(wheels)]
        _run([*pip, *download, "-r", str(req_file), "-c", str(wheels / "constraints.txt")])
    return wheels


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "deploy" / "build"
    print(f"wheelhouse: {build(target)}")
