"""In-memory train/test splits and their atomic ``.npz`` disk cache (shared by every data set)."""

from __future__ import annotations

import logging
import os
import tempfile
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_log = logging.getLogger("stamen.simulations.data")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory; arrays are read-only (they may be shared by a cache).

    Attributes
    ----------
    name : str
        Data set name, one of ``DATASETS``.
    x_train, x_test : np.ndarray
        ``float32`` features, shapes ``(n_train, features)`` and ``(n_test, features)``.
    y_train, y_test : np.ndarray
        ``int64`` labels in ``[0, num_classes)``, shapes ``(n_train,)`` and ``(n_test,)``.
    num_classes : int
        Number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_dim(self) -> int:
        """Number of features per sample."""
        return int(self.x_train.shape[1])


_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Cached train/test arrays (``x_train``, ``y_train``, ``x_test``, ``y_test``) of a data-set cache
    file, or ``None`` when it is missing or unreadable (then the caller regenerates). Shared by
    :mod:`stamen.simulations.text_data`."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.array(npz[k]) for k in _KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        _log.warning("ignoring unreadable data cache %s: %s", path, exc)
        return None


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + ``os.replace``); a read-only cache only costs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **typing.cast(dict[str, Any], arrays))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        _log.warning("could not write data cache %s: %s", path, exc)
