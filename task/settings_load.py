"""Reading run settings: built-in scenarios by name or TOML files, and ``--set`` overrides.

:func:`load_settings` is the one entry point (the server's config, the simulation's scenario and
the CLI use it); the section classes it builds live in :mod:`stamen.task.settings`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli ships with flwr)
    import tomli as tomllib

from stamen.task.settings import SCENARIO_PACKAGE, Settings
from stamen.task.settings_base import _build, _Config, _copy_tree, _leaf_type, _parse_text


def apply_overrides(
    base: Mapping[str, Any], overrides: Sequence[str], root: type[_Config] = Settings
) -> dict[str, Any]:
    """Return a copy of the scenario tree ``base`` with ``key=value`` overrides applied.

    Parameters
    ----------
    base : Mapping
        A scenario tree (as read from TOML or given by :meth:`Scenario.to_dict`); not modified.
    overrides : Sequence of str
        Items like ``"clients.lr=0.1"``, ``"codec.pipeline=topk,int8"``, ``"rounds=5"``.
    root : type
        The tree's root class (:class:`Settings`, or a subclass such as the simulation's Scenario).

    Raises
    ------
    ValueError
        For a malformed item, an unknown key, or a value that does not parse as the key's type.
    """
    out: dict[str, Any] = _copy_tree(base)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        path = key.split(".")
        value = _parse_text(text.strip(), _leaf_type(root, path), key)
        node = out
        for depth, seg in enumerate(path[:-1]):
            child = node.setdefault(seg, {})
            if not isinstance(child, dict):
                raise ValueError(f"'{'.'.join(path[: depth + 1])}' is not a table in the scenario")
            node = child
        node[path[-1]] = value
    return out


SIMULATION_ONLY = (
    "attack",
    "timing",
    "engine",
)  # sections a deployed server refuses (the simulation's Scenario has them)


def load_settings(name_or_path: str, overrides: Sequence[str] = (), root: type[_Config] = Settings) -> Any:
    """Load a built-in run by name (``"demo"``) or a ``.toml`` file, apply overrides, build ``root``.

    A file without a ``name`` key is named after its stem. With ``root = Settings`` (a deployed
    server) a simulation-only section such as ``[attack]`` is refused with one line naming it.

    Raises
    ------
    ValueError
        For an unknown built-in name, a missing or malformed file, or an invalid setting.
    """
    text, stem, origin = _read_source(name_or_path)
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: invalid TOML: {exc}") from exc
    tree.setdefault("name", stem)
    try:
        tree = apply_overrides(tree, overrides, root)
        if root is Settings:
            _refuse_simulation_only(tree)
        return _build(root, tree, "")
    except ValueError as exc:
        raise ValueError(f"scenario {origin}: {exc}") from exc


def _refuse_simulation_only(tree: Mapping[str, Any]) -> None:
    for section in SIMULATION_ONLY:
        if section in tree:
            raise ValueError(
                f"[{section}] is simulation-only (a deployed server never builds an adversary); "
                "run it with `stamen simulate`"
            )


def builtin_scenarios() -> list[tuple[str, str]]:
    """``(name, first line of description)`` of every built-in scenario, sorted by name."""
    out = []
    for res in resources.files(SCENARIO_PACKAGE).iterdir():
        if res.name.endswith(".toml"):
            tree = tomllib.loads(res.read_text(encoding="utf-8"))
            lines = str(tree.get("description", "")).strip().splitlines()
            out.append((res.name.removesuffix(".toml"), lines[0] if lines else ""))
    return sorted(out)


def _read_source(name_or_path: str) -> tuple[str, str, str]:
    """(TOML text, default name, description of the origin for messages)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or "/" in name_or_path or path.is_file():
        if path.is_dir():
            raise ValueError(f"scenario {name_or_path!r} is a directory, not a TOML file")
        if not path.is_file():
            raise ValueError(f"scenario file {name_or_path!r} not found")
        try:
            return path.read_text(encoding="utf-8"), path.stem, str(path)
        except UnicodeDecodeError as exc:
            raise ValueError(f"scenario file {name_or_path!r} is not UTF-8 text (byte {exc.start})") from None
    res = resources.files(SCENARIO_PACKAGE) / f"{name_or_path}.toml"
    if not res.is_file():
        if Path(f"{name_or_path}.toml").is_file():  # a file of ours, named without its suffix
            raise ValueError(f"unknown scenario {name_or_path!r}; did you mean the file {name_or_path}.toml?")
        names = ", ".join(n for n, _ in builtin_scenarios())
        raise ValueError(f"unknown scenario {name_or_path!r}; built-in: {names} (or a .toml path)")
    return res.read_text(encoding="utf-8"), name_or_path, f"'{name_or_path}'"
