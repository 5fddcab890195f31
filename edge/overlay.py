"""The personal overlay file: additive per-tensor deltas in safetensors, named by content hash.

The overlay is kept apart from the global weights: the device serves ``global + overlay`` and
every global update is applied to the global weights only, so personalization survives updates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from safetensors.numpy import save

from stamen.protocols import TensorInfo, ValidationError, model_hash

from .fsutil import atomic_write
from .manifest import Manifest, Overlay
from .torch_backend import read_safetensors_source

__all__ = ["check_overlay", "manifest_overlay", "read_overlay", "write_overlay"]

_PLAN_KEY = "stamen.plan"


def check_overlay(deltas: Mapping[str, np.ndarray], table: Sequence[TensorInfo]) -> None:
    """Refuse an overlay naming a tensor the model lacks, of another shape, or with NaN/inf.

    A float64 sum of float32 values cannot overflow (25M x 3.4e38 << 1.8e308), so it is non-finite
    exactly when an element is: one pass, no boolean temporary.

    Raises
    ------
    ValidationError
        Naming the first offending tensor.
    """
    shapes = {t.name: t.shape for t in table}
    for name, arr in deltas.items():
        if shapes.get(name) != np.shape(arr):
            raise ValidationError(f"overlay tensor {name!r} is not a model tensor of that shape")
        if not np.isfinite(np.asarray(arr).sum(dtype=np.float64)):
            raise ValidationError(f"overlay tensor {name!r} has non-finite values (NaN or inf)")


def write_overlay(store: Path, deltas: Mapping[str, np.ndarray], plan: str) -> Overlay:
    """Durably write ``deltas`` to ``store/overlay-<hash16>.safetensors``; return its manifest entry."""
    arrays = {name: np.ascontiguousarray(arr, dtype=np.float32) for name, arr in deltas.items()}
    digest = model_hash(arrays)
    name = f"overlay-{digest[:16]}.safetensors"
    data = save(arrays, metadata={_PLAN_KEY: plan})

    def write(fh: BinaryIO) -> None:
        fh.write(data)

    atomic_write(store / name, write)
    return Overlay(name, digest, plan, tuple(arrays))


def read_overlay(path: Path, table: Sequence[TensorInfo], mapped: bool = True) -> dict[str, np.ndarray]:
    """Read an overlay; every tensor must be a model tensor with the model's shape (``mapped``: see
    :func:`~stamen.edge.torch_backend.read_safetensors_source`).

    Raises
    ------
    ValueError
        If the file is unreadable or names an unknown tensor or a wrong shape.
    """
    deltas, _ = read_safetensors_source(path, mapped)
    shapes = {t.name: t.shape for t in table}
    for name, arr in deltas.items():
        if shapes.get(name) != arr.shape:
            raise ValueError(f"overlay {path.name}: tensor {name!r} is not a model tensor of that shape")
    return deltas


def manifest_overlay(store: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """The overlay ``manifest`` names in ``store`` (memory-mapped), empty if none."""
    o = manifest.overlay
    return {} if o is None else read_overlay(store / o.file, manifest.tensors)
