"""Every module imports on its own, first, in a fresh interpreter state: an import cycle that only
bites when a module is the first of its package to load (``plan`` -> ``checkpoint_state`` ->
``engines`` -> ``plan``) fails here, whatever order the other tests happened to import things in."""

from __future__ import annotations

import subprocess
import sys

_EACH_FIRST = """
import importlib, pkgutil, sys
folders = ("protocols", "task", "privacy", "server", "client", "edge", "simulations")
tops = ["stamen", *(f"stamen.{p}" for p in folders)]
names = set(tops)
for top in tops:  # the editable install maps each top-level folder to its own stamen.* package
    pkg = importlib.import_module(top)
    names.update(m.name for m in pkgutil.walk_packages(pkg.__path__, top + "."))
names = sorted(n for n in names if not n.endswith("__main__"))  # those run a command
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "stamen" or m.startswith("stamen.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:  # report them all, not just the first
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_first_on_its_own() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _EACH_FIRST], capture_output=True, text=True, timeout=600, check=True
    )
    count, *failed = proc.stdout.strip().splitlines()
    assert int(count) > 200 and not failed, "\n".join(failed)
