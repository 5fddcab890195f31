"""Where a deployed node's data comes from: its own configuration, never a message.

A node's ``data-source`` in its node config
(``flower-supernode --node-config 'data-source=/data/train.npz'``), or in the run config as a
default, is one of:

- a ``.npz`` file with ``x`` ``(n, features)`` and ``y`` ``(n,)`` (optional ``x_test``/``y_test``, a
  local held-out set, and ``num_classes``; otherwise ``max(y) + 1``);
- a directory holding ``train.npz`` (and optionally ``test.npz``) with ``x`` and ``y``;
- an importable entry point ``"package.module:function"``, called as
  ``function(node_config, run_config) -> DataSource`` (e.g. a simulation's partitioner, or a reader of
  the device's sensor log).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stamen.task.data import ArraySource, DataSource, TaskData

KEY = "data-source"


def data_source_spec(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> str:
    """The configured ``data-source`` (node config first); ``ValueError`` naming how to set it."""
    spec = node_config.get(KEY) or run_config.get(KEY)
    if not spec:
        raise ValueError(
            "this node has no data source: start the SuperNode with --node-config "
            "'data-source=/path/to/train.npz' (or a directory, or 'package.module:function')"
        )
    return str(spec)


def load_data_source(spec: str, node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> DataSource:
    """Open the data source ``spec`` (see the module docstring)."""
    if ":" in spec and not Path(spec).exists():
        return _entry_point(spec)(node_config, run_config)
    path = Path(spec)
    if path.is_dir():
        test = path / "test.npz"
        return ArraySource(
            _read(path / "train.npz", "x", "y"), _read(test, "x", "y") if test.is_file() else None
        )
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            has_test = "x_test" in npz.files and "y_test" in npz.files
        return ArraySource(_read(path, "x", "y"), _read(path, "x_test", "y_test") if has_test else None)
    raise ValueError(f"data-source {spec!r}: not an .npz file, a directory, or 'module:function'")


def _entry_point(spec: str) -> Any:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"data-source {spec!r}: cannot import it ({exc})") from exc
    if not callable(fn):
        raise ValueError(f"data-source {spec!r} is not callable")
    return fn


def _read(path: Path, xkey: str, ykey: str) -> TaskData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = np.asarray(npz[xkey]), np.asarray(npz[ykey], dtype=np.int64)
            classes = int(npz["num_classes"]) if "num_classes" in npz.files else int(y.max()) + 1
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"data-source {path}: needs arrays {xkey!r} and {ykey!r} ({exc})") from exc
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"data-source {path}: {xkey} must be (n, features) and {ykey} (n,), got {x.shape}, {y.shape}"
        )
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    return TaskData(x, y, classes, int(x.shape[1]))
