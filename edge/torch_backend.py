"""PyTorch backend: one safetensors ``state_dict`` per version; inference with the torch module.

The module is rebuilt from the store's architecture spec (:mod:`stamen.edge.arch`), so a torch
store needs one (``stamen.arch`` in the safetensors metadata, or given at init).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load, save

from stamen.protocols import TensorInfo

from .archspec import ARCH_KEY
from .fsutil import create_new, naming
from .inputs import InputSpec

__all__ = [
    "WEIGHTS",
    "NoSession",
    "ShadowState",
    "TorchBackend",
    "TorchSession",
    "read_safetensors_source",
    "write_state",
]

WEIGHTS = "weights.safetensors"


def read_safetensors_source(path: Path, mapped: bool = True) -> tuple[dict[str, np.ndarray], str | None]:
    """Load a safetensors state_dict: float32 tensors sorted by name, and the arch metadata.

    ``mapped=False`` reads the file into memory instead of mapping it (a failing disk then raises
    EIO instead of killing the process with SIGBUS), without the metadata (None).

    Raises
    ------
    ValueError
        If the file is not safetensors or holds a non-float32 tensor.
    OSError
        As raised (a missing file, or a read that failed: not the file's fault, e.g. EIO).
    """
    raw = None if mapped else path.read_bytes()
    try:
        if raw is not None:
            meta: dict[str, str] = {}
            loaded = load(raw)
            weights = {name: np.array(loaded[name]) for name in sorted(loaded)}
        else:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                weights = {name: np.array(fh.get_tensor(name)) for name in sorted(fh.keys())}
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from None
    bad = [n for n, a in weights.items() if a.dtype != np.float32]
    if bad or not weights:
        raise ValueError(f"{path}: every tensor must be float32 (bad: {bad[:3]}) and there must be one")
    return weights, meta.get(ARCH_KEY)


def write_state(path: Path, tensors: Mapping[str, np.ndarray], *, durable: bool) -> None:
    """Write ``tensors`` as a new safetensors file ``path`` (never through a planted link); an
    ``OSError`` (a full disk) names ``path``; ``durable`` fsyncs it."""
    data = save(dict(tensors))
    fd = create_new(path)
    try:
        with naming(path):
            view, pos = memoryview(data), 0
            while pos < len(view):
                pos += os.write(fd, view[pos:])
            if durable:
                os.fsync(fd)
    finally:
        os.close(fd)


class TorchSession:
    """The :class:`~stamen.edge.arch.EdgeNet` loaded with one version's effective weights."""

    def __init__(self, arch: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> None:
        import torch  # only torch stores need torch at serving time

        from .arch import build_model

        self._torch = torch
        self.model = build_model(dict(arch))
        self.input_spec = InputSpec(self.model.spec.input_shape, flat_ok=True)
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()}
        self.model.load_state_dict(state, strict=True)
        self.model.eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch ``x``."""
        torch = self._torch
        with torch.no_grad():
            out: np.ndarray = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        return out


class NoSession:
    """Placeholder for a store that cannot serve; ``run`` raises ``ValueError(reason)``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def run(self, x: np.ndarray) -> np.ndarray:
        """Always raises."""
        raise ValueError(self.reason)


class ShadowState:
    """A new version's state_dict being built in memory; :meth:`sync` writes and fsyncs it."""

    def __init__(self, path: Path, table: Sequence[TensorInfo]) -> None:
        self.path = path
        self.views = {info.name: np.empty(info.shape, np.float32) for info in table}

    def prefault(self) -> None:
        """Nothing to prepare for in-memory arrays."""

    def sync(self) -> None:
        """Write ``weights.safetensors`` and fsync it."""
        write_state(self.path, self.views, durable=True)

    def close(self) -> None:
        """Release the arrays."""
        self.views = {}


class TorchBackend:
    """Reads and writes safetensors versions of a store."""

    kind = "torch"

    def __init__(self, store: Path) -> None:
        self.store = store

    def install(self, skeleton: bytes) -> None:
        """Nothing to install: a torch store has no graph."""
        del skeleton

    def files_fault(self, vdir: Path, graph: str | None = None) -> str | None:
        """Nothing besides the weights: a torch version is its safetensors file."""
        del vdir, graph
        return None

    def read(self, vdir: Path, table: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
        """Weights of version directory ``vdir`` in table order (read-only)."""
        return self._read(vdir, table, mapped=True)

    def read_unmapped(self, vdir: Path, table: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
        """:meth:`read`, the file read into memory instead of mapped (a failing disk raises
        ``OSError``, not SIGBUS; see :func:`read_safetensors_source`)."""
        return self._read(vdir, table, mapped=False)

    def _read(self, vdir: Path, table: Sequence[TensorInfo], mapped: bool) -> dict[str, np.ndarray]:
        weights, _ = read_safetensors_source(vdir / WEIGHTS, mapped)
        out = {}
        for info in table:
            arr = weights.get(info.name)
            if arr is None or arr.shape != info.shape:
                raise ValueError(f"{vdir / WEIGHTS}: tensor {info.name!r} missing or misshapen")
            arr.flags.writeable = False
            out[info.name] = arr
        return out

    def write(self, vdir: Path, weights: Mapping[str, np.ndarray], table: Sequence[TensorInfo]) -> None:
        """Write ``weights.safetensors`` into (shadow) directory ``vdir`` (not fsynced)."""
        tensors = {info.name: np.ascontiguousarray(weights[info.name], dtype=np.float32) for info in table}
        write_state(vdir / WEIGHTS, tensors, durable=False)

    def open_shadow(self, vdir: Path, table: Sequence[TensorInfo]) -> ShadowState:
        """Arrays to compute a new version into; written to ``vdir`` on ``sync``."""
        return ShadowState(vdir / WEIGHTS, table)

    def session(
        self,
        vdir: Path,
        table: Sequence[TensorInfo],
        overrides: Mapping[str, np.ndarray],
        arch: Mapping[str, Any] | None,
        threads: int,
    ) -> TorchSession | NoSession:
        """A module on ``vdir``'s weights with ``overrides`` replacing tensors.

        Without an architecture spec the store still takes updates, but cannot serve: the
        returned :class:`NoSession` refuses to run.
        """
        del threads  # torch threads are process-wide; EdgeRuntime sets them once
        if arch is None:
            return NoSession("this torch store has no architecture spec ('stamen.arch') to serve with")
        weights = dict(self.read(vdir, table))
        weights.update(overrides)
        return TorchSession(arch, weights)
