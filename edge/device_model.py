"""A training-ready model whose frozen weights cost (almost) no anonymous memory.

Sparse personalization trains a small part of a model; the rest only has to be *read*. The usual
way to build the model (construct it with random weights, then ``load_state_dict`` from a loaded
file) holds every weight in float32 anonymous memory, often twice. :func:`device_model` builds the
module on the ``meta`` device (no weight storage at all) and then gives each parameter its storage
according to what the plan does with it:

- **trained** tensors (and linear weights trained on some input channels): a private float32
  copy, read from the file with ``readinto`` (anonymous memory, as any trained tensor needs);
- **frozen** tensors, ``frozen="mmap"``: a zero-copy view of the weights file, memory-mapped
  copy-on-write (never written, so never copied). These are *file-backed* pages: the kernel
  reads only the pages the run touches, counts them in the process's RSS as ``RssFile`` while
  mapped, shares them with every other mapping of the file, and can drop them under memory
  pressure without swap. A page fault maps its neighbours too (Linux "fault-around", 64 kB by
  default), so scattered reads such as the embedding rows of a batch make most of a table
  resident;
- ``frozen="int8"`` / ``"fp16"``: as ``mmap``, except that frozen ``nn.Linear`` and
  ``nn.Embedding`` weights become :class:`~stamen.edge.frozen_layers.FrozenLinear` /
  :class:`~stamen.edge.frozen_layers.FrozenEmbedding` layers (1 or 2 bytes per weight,
  dequantized per layer, or per looked-up row, on the fly). The float32 source of each is read
  into a transient buffer, never mapped;
- ``frozen="copy"``: every tensor a private float32 copy (the usual way, for comparison).

The safetensors file format (a little-endian u64 header length, a JSON header with ``dtype``,
``shape`` and ``data_offsets`` per tensor relative to the data start, then the data) is read
directly so that views are true zero-copy views (``safetensors.safe_open`` copies).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .frozen_layers import KINDS, FrozenEmbedding, FrozenLinear, quantize_rows

__all__ = ["FROZEN_MODES", "SafetensorsFile", "device_model", "meta_model"]

FROZEN_MODES = ("copy", "mmap", *KINDS)
_MAX_HEADER = 100 << 20  # bytes; safetensors' own limit


class SafetensorsFile:
    """float32 tensors of a safetensors file, as memory-mapped views or as private copies.

    Parameters
    ----------
    path : Path
        The file.
    prefix : str, default ""
        Prepended to every tensor name in the file (e.g. ``"bert."`` for an encoder file whose
        names lack the wrapping module's attribute).

    Raises
    ------
    ValueError
        If a float32 tensor's extent does not fit its shape or lies outside the file.
    """

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > _MAX_HEADER:
                raise ValueError(f"{path}: safetensors header of {n} bytes is too large")
            header = json.loads(fh.read(n))
        self._start = 8 + n
        size = self.path.stat().st_size
        self.entries: dict[str, tuple[tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__" or info.get("dtype") != "F32":
                continue  # only float32 tensors are offered (e.g. an int64 position_ids is skipped)
            begin, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            if end - begin != 4 * math.prod(shape) or self._start + end > size:
                raise ValueError(f"{path}: tensor {name!r} does not lie inside the file")
            self.entries[prefix + name] = (shape, self._start + begin, end - begin)
        self._map: np.memmap | None = None

    def view(self, name: str) -> np.ndarray:
        """Zero-copy float32 view (copy-on-write mapping: writable, file-backed until written)."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="c")
        shape, offset, nbytes = self.entries[name]
        return np.frombuffer(self._map, np.float32, nbytes // 4, offset).reshape(shape)

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """A private float32 copy (of rows ``[a, b)`` of the first axis), read without mapping
        the file."""
        shape, offset, nbytes = self.entries[name]
        if rows is not None:
            row = 4 * math.prod(shape[1:])
            a, b = max(0, rows[0]), min(shape[0], rows[1])
            shape, offset, nbytes = (b - a, *shape[1:]), offset + a * row, (b - a) * row
        out = np.empty(shape, np.float32)
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(offset)
            if fh.readinto(out.data.cast("B")) != nbytes:
                raise ValueError(f"{self.path}: tensor {name!r} is truncated")
        return out

    def read_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Private float32 copies of the rows ``ids`` (first axis) of ``name``, in that order."""
        shape, offset, _ = self.entries[name]
        row = 4 * math.prod(shape[1:])
        out = np.empty((len(ids), *shape[1:]), np.float32)
        view = out.data.cast("B")
        with open(self.path, "rb", buffering=0) as fh:
            for k, i in enumerate(np.asarray(ids, np.int64).tolist()):
                if not 0 <= i < shape[0]:
                    raise ValueError(f"row {i} of {name!r} is outside [0, {shape[0]})")
                fh.seek(offset + i * row)
                fh.readinto(view[k * row : (k + 1) * row])
        return out


class _SkipMetaInit(TorchFunctionMode):
    """Skip in-place ops (``normal_``, ``uniform_``, ``fill_``, ...) on meta tensors while a model
    is constructed: their values would be discarded anyway, and the first ``normal_`` on a meta
    tensor imports torch's Python meta kernels (measured: ~820 modules, +68 MB RssAnon, ~1 s)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes tensor=...
        if name.endswith("_") and not name.endswith("__") and getattr(target, "is_meta", False):
            return target
        return func(*args, **kwargs)


def meta_model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device: shapes and names only, no storage, no initialization."""
    with torch.device("meta"), _SkipMetaInit():
        return build()


def _find(sources: Sequence[SafetensorsFile], name: str) -> SafetensorsFile:
    for src in sources:
        if name in src.entries:
            return src
    raise ValueError(f"no float32 tensor {name!r} for the model in {[str(s.path) for s in sources]}")


def _row_reader(
    source: SafetensorsFile, wname: str, ids: np.ndarray | None
) -> tuple[Callable[[int, int], torch.Tensor], tuple[int, int]]:
    """``(start, stop) -> float32 rows`` from the file (of the rows ``ids`` only, if given)."""
    shape = source.entries[wname][0]
    if ids is None:
        return (lambda a, b: torch.from_numpy(source.read(wname, (a, b)))), (shape[0], shape[1])
    return (lambda a, b: torch.from_numpy(source.read_rows(wname, ids[a:b]))), (len(ids), shape[1])


def _freeze(
    model: nn.Module,
    sources: Sequence[SafetensorsFile],
    trained: Collection[str],
    kind: str,
    rows: Mapping[str, np.ndarray],
) -> None:
    """Replace frozen layers by their compact counterparts, reading each float32 weight from the
    file in blocks of rows (it never exists whole; biases are attached later): with ``kind``
    ``int8``/``fp16`` every frozen ``nn.Linear`` and ``nn.Embedding``; with ``fp32`` only the
    embedding tables named in ``rows``, cut down to those rows."""
    quantized = kind in KINDS
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if f"{name}.weight" not in trained
        and (
            (quantized and isinstance(mod, nn.Linear))
            or (isinstance(mod, nn.Embedding) and (quantized or f"{name}.weight" in rows))
        )
    ]
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wname = f"{name}.weight"
        keep = None if wname not in rows else np.unique(np.asarray(rows[wname], np.int64))
        read, shape = _row_reader(_find(sources, wname), wname, keep)
        q, scale = quantize_rows(read, kind, shape)
        if isinstance(mod, nn.Linear):
            setattr(parent, attr, FrozenLinear(q, scale, mod.bias))
        else:
            kept = None if keep is None else torch.from_numpy(keep)
            setattr(parent, attr, FrozenEmbedding(q, scale, kept, mod.num_embeddings))


def _attach(
    model: nn.Module, sources: Sequence[SafetensorsFile], trained: Collection[str], frozen: str
) -> None:
    """Give every parameter and buffer still on the meta device its storage (module docstring)."""
    slots = [(n, t, True) for n, t in model.named_parameters()] + [
        (n, t, False) for n, t in model.named_buffers()
    ]
    for name, tensor, is_param in slots:
        if not tensor.is_meta:
            continue
        source = _find(sources, name)
        private = frozen == "copy" or name in trained
        value = torch.from_numpy(source.read(name) if private else source.view(name))
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if is_param:
            setattr(owner, attr, nn.Parameter(value, requires_grad=name in trained))
        else:
            owner.register_buffer(attr, value)


def device_model(
    build: Callable[[], nn.Module],
    sources: Sequence[SafetensorsFile],
    trained: Collection[str],
    frozen: str = "mmap",
    rows: Mapping[str, np.ndarray] | None = None,
) -> nn.Module:
    """Build ``build()`` on the meta device and attach weights from ``source`` (module docstring).

    Parameters
    ----------
    build : callable
        Returns the model (constructed under ``torch.device("meta")``: allocates nothing).
    sources : sequence of SafetensorsFile
        Weights, looked up in order; every parameter and buffer of the model must be in one.
    trained : collection of str
        Parameter names the plan trains (whole or on some input channels): private copies with
        ``requires_grad=True`` (the plan turns it off for channel-trained weights).
    frozen : str, default "mmap"
        ``copy``, ``mmap``, ``int8`` or ``fp16``.
    rows : mapping of str to array of int, optional
        For frozen embedding tables (by weight name): the only ids the run will look up, e.g.
        the token ids of the local data; only those rows are kept (float32 under ``mmap``,
        quantized under ``int8``/``fp16``; ignored under ``copy``). Another id raises.

    Returns
    -------
    nn.Module
        In eval mode; frozen parameters have ``requires_grad=False``.

    Raises
    ------
    ValueError
        For an unknown ``frozen`` mode or a tensor missing from ``source``.
    """
    if frozen not in FROZEN_MODES:
        raise ValueError(f"frozen must be one of {FROZEN_MODES}, got {frozen!r}")
    model = meta_model(build)
    if frozen in KINDS:
        _freeze(model, sources, trained, frozen, rows or {})
    elif frozen == "mmap" and rows:
        _freeze(model, sources, trained, "fp32", rows)
    _attach(model, sources, trained, frozen)
    return model.eval()
