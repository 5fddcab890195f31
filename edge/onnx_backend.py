"""ONNX backend: a skeleton graph plus one external-data weights file per version.

Every float32 initializer of the source model becomes an *external* tensor (``size_threshold=0``:
biases too, research/edge.md §1.6) stored in ``weights.data`` at a fixed, 4096-byte aligned
offset computed from the tensor table, so every version shares the same skeleton graph and a
delta is applied per tensor, by name. Integer initializers (shape constants) stay in the graph.

Inference sessions are created from the version's ``model.onnx`` path, so onnxruntime reads the
new ``weights.data`` itself; the personal overlay is passed with
``SessionOptions.add_external_initializers``, which replaces tensors *before* graph optimization.
``add_initializer`` is never used: with optimizations on, onnxruntime constant-folds
``Transpose(W)`` from the embedded weights and silently ignores the override (edge.md §1.5).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from stamen.protocols import TensorInfo, tensor_table

from .archspec import ARCH_KEY
from .errors import StoreCorrupt
from .fsutil import atomic_write, create_new, naming, write_new
from .inputs import InputSpec

__all__ = ["DATA", "GRAPH", "BufferedWeights", "OnnxBackend", "OnnxSession", "layout", "read_onnx_source"]

GRAPH = "model.onnx"
DATA = "weights.data"
SKELETON = "graph.onnx"
_ALIGN = 4096
_PAGE = mmap.PAGESIZE


def layout(table: Sequence[TensorInfo]) -> list[tuple[int, int]]:
    """``(offset, nbytes)`` of each tensor in ``weights.data``; offsets are multiples of 4096."""
    out, pos = [], 0
    for info in table:
        nbytes = info.size * np.dtype(info.dtype).itemsize
        out.append((pos, nbytes))
        pos += -(-nbytes // _ALIGN) * _ALIGN
    return out


def read_onnx_source(path: Path) -> tuple[dict[str, np.ndarray], bytes, str | None]:
    """Load an ONNX model: its float32 weights, a skeleton graph and the arch metadata.

    Returns
    -------
    tuple
        ``(weights, skeleton_bytes, arch_json)``; weights sorted by name; the skeleton
        references every float32 initializer in ``weights.data`` (see :func:`layout`).

    Raises
    ------
    ValueError
        If the file is not a loadable ONNX model or has no float32 initializer.
    """
    import onnx  # the host and `edge init` parse ONNX files; apply/predict/status never do
    from onnx import external_data_helper, numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ValueError(f"{path}: not a loadable ONNX model: {type(exc).__name__}: {exc}") from None
    # Canonical order is by name everywhere (safetensors files are sorted too), so tables from
    # ONNX and safetensors sources of the same model are equal.
    inits = sorted(
        (t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT), key=lambda t: t.name
    )
    if not inits:
        raise ValueError(f"{path}: the ONNX graph has no float32 initializers (weights)")
    weights = {t.name: np.array(numpy_helper.to_array(t), dtype=np.float32) for t in inits}
    if len(weights) != len(inits):
        raise ValueError(f"{path}: duplicate initializer names")
    for tensor, (offset, nbytes) in zip(inits, layout(tensor_table(weights)), strict=True):
        external_data_helper.set_external_data(tensor, DATA, offset, nbytes)
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
    arch = next((p.value for p in model.metadata_props if p.key == ARCH_KEY), None)
    return weights, model.SerializeToString(), arch


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-wait on 2 cores
    return so


_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxSession:
    """An onnxruntime session on one version, with the overlay tensors overridden."""

    def __init__(self, graph: Path, overrides: Mapping[str, np.ndarray], threads: int) -> None:
        import onnxruntime as ort  # imported when a session is built, not by `stamen edge status`

        so = _session_options(threads)
        if overrides:
            names = list(overrides)
            values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(overrides[n])) for n in names]
            so.add_external_initializers(names, values)  # copied by ORT before optimization
        self._sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        inp = self._sess.get_inputs()[0]
        self._input, self._rank = inp.name, len(inp.shape)
        self._dtype = _DTYPES.get(inp.type, np.float32)
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in inp.shape[1:])
        self.input_spec = InputSpec(dims, flat_ok=self._rank == 2)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the first graph output for a batch ``x`` (cast to the graph input's dtype)."""
        arr = np.ascontiguousarray(x, dtype=self._dtype)
        if self._rank == 2:
            arr = arr.reshape(len(arr), -1)
        out: Any = self._sess.run(None, {self._input: arr})[0]
        return np.asarray(out)


class BufferedWeights:
    """A new ``weights.data`` built in one anonymous buffer, written with one ``pwrite`` pass.

    One writable view per tensor, laid out exactly as :meth:`OnnxBackend.write` lays out the file
    (padding zeroed). :meth:`sync` writes the buffer and fsyncs it. Measured on this machine's
    disk (``BENCHMARKS.md`` §3c): a shared file mapping written in place and fsynced while the
    hash thread reads it took 113–134 ms for 100 MB, the buffer + ``pwrite`` + fsync 45–55 ms.
    """

    def __init__(self, path: Path, table: Sequence[TensorInfo]) -> None:
        spans = layout(table)
        total = max((offset + nbytes for offset, nbytes in spans), default=0)
        self.path = path
        self._fd = create_new(path)
        self._buf = np.empty(total, np.uint8)
        self._ends = [offset + nbytes for offset, nbytes in spans]
        self._starts = [offset for offset, _ in spans]
        for end, nxt in zip(self._ends, [*self._starts[1:], total], strict=True):
            self._buf[end:nxt] = 0  # alignment padding, as the holes OnnxBackend.write leaves
        self.views: dict[str, np.ndarray] = {}
        for info, (offset, _) in zip(table, spans, strict=True):
            arr = np.frombuffer(self._buf, np.dtype(info.dtype), count=info.size, offset=offset)
            self.views[info.name] = arr.reshape(info.shape)

    def prefault(self) -> None:
        """Touch every page of the buffer now (numpy's strided copy runs without the GIL, so this
        overlaps the payload check); the add later takes no page faults."""
        self._buf[::_PAGE] = 0

    def sync(self) -> None:
        """Write the whole buffer at offset 0 and fsync: every byte is durable afterwards."""
        view, pos = self._buf.data, 0
        with naming(self.path):
            while pos < len(view):
                pos += os.pwrite(self._fd, view[pos:], pos)
            os.fsync(self._fd)

    def close(self) -> None:
        """Drop the views and the buffer, close the file."""
        self.views = {}
        self._buf = np.empty(0, np.uint8)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileTensors(Mapping[str, np.ndarray]):
    """The tensors of a ``weights.data`` file, each read (``os.pread``) when looked up: a hash pass
    over them holds one tensor in memory, and a read error is an ``OSError``, not a SIGBUS.

    Raises (on lookup) ``ValueError`` when the file is truncated before the tensor's end."""

    def __init__(self, path: Path, table: Sequence[TensorInfo]) -> None:
        self.path, self._size = path, path.stat().st_size  # FileNotFoundError when it is gone
        spans = zip(table, layout(table), strict=True)
        self._where = {info.name: (info, offset, nbytes) for info, (offset, nbytes) in spans}

    def __getitem__(self, name: str) -> np.ndarray:
        info, offset, nbytes = self._where[name]
        if offset + nbytes > self._size:
            raise ValueError(f"{self.path} is truncated at tensor {info.name!r}")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        if len(raw) != nbytes:
            raise ValueError(f"{self.path} is truncated at tensor {info.name!r}")
        return np.frombuffer(raw, dtype=np.dtype(info.dtype)).reshape(info.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _sha256(path: Path) -> str | None:
    """SHA-256 (hex) of the file ``path`` (None: it is missing); any other ``OSError`` is raised."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return hashlib.sha256(data).hexdigest()


def _graph_fault(path: Path, want: str | None) -> str | None:
    """Why graph file ``path`` is unusable: missing, or (``want`` given) its SHA-256 differs."""
    if want is None:
        return None if path.is_file() else f"{path} is missing"
    got = _sha256(path)
    if got is None:
        return f"{path} is missing"
    return None if got == want else f"{path} fails its hash check"


def _rewrite(path: Path, data: bytes) -> None:
    def write(fh: BinaryIO) -> None:
        fh.write(data)

    atomic_write(path, write)


class OnnxBackend:
    """Reads and writes ONNX versions of a store (see module docstring)."""

    kind = "onnx"

    def __init__(self, store: Path, graph: str | None = None) -> None:
        self.store = store
        self.graph = graph  # the manifest's SHA-256 of the skeleton (None: not recorded)

    def skeleton(self, graph: str | None = None) -> bytes:
        """The skeleton's bytes, checked against ``graph`` (default: :attr:`graph`) when known.

        Raises
        ------
        StoreCorrupt
            If they fail it: a new version would copy a rotten graph (repair rewrites it).
        """
        data = (self.store / SKELETON).read_bytes()
        want = self.graph if graph is None else graph
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise StoreCorrupt(
                f"{SKELETON} fails its hash check (`stamen edge repair --model {self.store}` rewrites it)"
            )
        return data

    def install(self, skeleton: bytes) -> None:
        """Write the shared skeleton graph into a new store."""
        write_new(self.store / SKELETON, skeleton)

    def read(self, vdir: Path, table: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
        """Read-only memory-mapped weights of version directory ``vdir``."""
        data = np.memmap(vdir / DATA, dtype=np.uint8, mode="r")
        out = {}
        for info, (offset, nbytes) in zip(table, layout(table), strict=True):
            if offset + nbytes > data.size:
                raise ValueError(f"{vdir / DATA} is truncated at tensor {info.name!r}")
            raw = data[offset : offset + nbytes]
            out[info.name] = np.frombuffer(raw, dtype=np.dtype(info.dtype)).reshape(info.shape)
        return out

    def read_unmapped(self, vdir: Path, table: Sequence[TensorInfo]) -> Mapping[str, np.ndarray]:
        """The weights of ``vdir``, each tensor read from the file when it is looked up
        (:class:`FileTensors`): what a check reads, where a failing disk must raise ``OSError`` (EIO)
        rather than kill the process with SIGBUS on a mapped page, holding one tensor at a time."""
        return FileTensors(vdir / DATA, table)

    def files_fault(self, vdir: Path, graph: str | None = None) -> str | None:
        """Why version ``vdir``'s graph is unusable (None: it is not): missing, or its bytes differ
        from ``graph``, the manifest's SHA-256 of the skeleton. Without one (a store made before it
        was recorded) only a missing graph counts: the skeleton may have rotted too, so comparing
        with it could blame intact versions. A read error but a missing file is raised."""
        return _graph_fault(vdir / GRAPH, graph)

    def skeleton_fault(self, graph: str) -> str | None:
        """Why the shared skeleton is unusable: missing or failing ``graph`` (its SHA-256)."""
        return _graph_fault(self.store / SKELETON, graph)

    def heal_skeleton(self, vdirs: Sequence[Path], graph: str) -> Path | None:
        """Rewrite the skeleton (atomically; the manifest is unchanged) from the first version
        directory in ``vdirs`` whose graph passes ``graph``, the bytes checked being the bytes
        written; that directory (None: no intact copy). A copy that cannot be read is skipped."""
        for vdir in vdirs:
            try:
                data = (vdir / GRAPH).read_bytes()
            except OSError:  # missing or unreadable: another copy may do
                continue
            if hashlib.sha256(data).hexdigest() == graph:
                _rewrite(self.store / SKELETON, data)
                return vdir
        return None

    def heal_graph(self, vdir: Path, graph: str) -> None:
        """Rewrite version ``vdir``'s graph from the skeleton, checked against ``graph`` (the bytes
        checked are the bytes written; atomic)."""
        _rewrite(vdir / GRAPH, self.skeleton(graph))

    def write(self, vdir: Path, weights: Mapping[str, np.ndarray], table: Sequence[TensorInfo]) -> None:
        """Write the graph and ``weights.data`` into (shadow) directory ``vdir`` (not fsynced)."""
        write_new(vdir / GRAPH, self.skeleton())
        with naming(vdir / DATA), os.fdopen(create_new(vdir / DATA), "wb") as fh:
            for info, (offset, _) in zip(table, layout(table), strict=True):
                fh.seek(offset)
                fh.write(np.ascontiguousarray(weights[info.name], dtype=info.dtype).data)

    def open_shadow(self, vdir: Path, table: Sequence[TensorInfo]) -> BufferedWeights:
        """Copy the (checked) graph into (shadow) directory ``vdir`` and open a new ``weights.data``."""
        write_new(vdir / GRAPH, self.skeleton())
        return BufferedWeights(vdir / DATA, table)

    def session(
        self,
        vdir: Path,
        table: Sequence[TensorInfo],
        overrides: Mapping[str, np.ndarray],
        arch: Mapping[str, Any] | None,
        threads: int,
    ) -> OnnxSession:
        """A new inference session on ``vdir`` (``table`` and ``arch`` are not needed for ONNX)."""
        del table, arch
        return OnnxSession(vdir / GRAPH, overrides, threads)
