"""Input files and input shapes of a model store (numpy only: a device without torch reads them).

Data files are ``.npz`` with ``x`` (float, ``(n, ...)``) and optionally ``y`` (integer labels).
Before anything runs, ``x`` is checked against what the store's model takes (:class:`InputSpec`),
so a wrongly shaped file is one clear ``ValueError`` instead of a torch or onnxruntime traceback.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["InputSpec", "load_npz"]


@dataclass(frozen=True)
class InputSpec:
    """What one sample of a model's input looks like.

    Attributes
    ----------
    shape : tuple of (int or None)
        Per-sample dimensions (the batch axis excluded); ``None`` is a dimension of any size
        (a symbolic ONNX dimension).
    flat_ok : bool
        The model reshapes its input itself (an MLP/CNN of the edge family, or an ONNX graph whose
        input is ``(n, features)``): any per-sample shape with ``prod(shape)`` values is accepted.
    """

    shape: tuple[int | None, ...]
    flat_ok: bool = False

    def describe(self) -> str:
        """``1x8x8`` style text (``?`` for a free dimension)."""
        return "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"

    def check(self, x: np.ndarray, source: str) -> None:
        """Raise ``ValueError`` (one line naming ``source``) unless ``x`` fits (see class docstring)."""
        got = tuple(int(d) for d in np.shape(x)[1:])
        if self._fits(got):
            return
        want = f"({self.describe()})"
        if self.flat_ok and None not in self.shape and len(self.shape) > 1:
            want += f" or {math.prod(d for d in self.shape if d is not None)} values flattened"
        raise ValueError(
            f"{source}: x has per-sample shape ({'x'.join(map(str, got)) or 'scalar'}), "
            f"the model takes {want}"
        )

    def _fits(self, got: tuple[int, ...]) -> bool:
        same_rank = len(got) == len(self.shape)
        if same_rank and all(w is None or w == g for w, g in zip(self.shape, got, strict=True)):
            return True
        if self.flat_ok and None not in self.shape:
            return math.prod(got) == math.prod(d for d in self.shape if d is not None)
        return False


def load_npz(path: str | Path, classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a personalization/prediction data file: ``.npz`` with ``x`` and (optionally) ``y``.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file (read with ``allow_pickle=False``).
    classes : int or None
        Labels must lie in ``[0, classes)`` (not checked when None).

    Returns
    -------
    (x, y) : (numpy.ndarray, numpy.ndarray)
        ``x`` as float32 ``(n, ...)``; ``y`` as int64 ``(n,)``, or empty when the file has none.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If ``x`` is missing, empty or non-finite, or ``y`` has the wrong length or labels
        outside ``[0, classes)``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    if not zipfile.is_zipfile(p):  # numpy would try to unpickle it and suggest allow_pickle
        raise ValueError(f"{p}: not an .npz file (numpy.savez) with an 'x' array")
    try:
        with np.load(p, allow_pickle=False) as f:
            x = np.asarray(f["x"], np.float32)
            y = np.asarray(f["y"]) if "y" in f else np.zeros(0, np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{p}: not an .npz with an 'x' array: {exc}") from None
    if x.ndim < 2 or len(x) == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"{p}: 'x' must be a non-empty finite array of shape (n, ...)")
    if y.size and (
        y.shape != (len(x),)
        or y.dtype.kind not in "iu"
        or y.min() < 0
        or (classes is not None and y.max() >= classes)
    ):
        raise ValueError(f"{p}: 'y' must hold {len(x)} integer labels in [0, {classes})")
    return x, y.astype(np.int64)
