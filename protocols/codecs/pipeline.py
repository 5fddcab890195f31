"""The codec pipeline: stages in order on encode, in reverse on decode.

Encode::

    {name: float32} --rename to "0", "1", ...--> array stages --container--> [byte stage] --> bytes

Tensor names never enter the payload (they travel once, in the envelope's tensor table); the
payload refers to tensors by table index. Decode walks the stages in reverse, bounded by the
receiver's tensor table, and maps indices back to names, checking that every tensor is present
with the right number of elements. Any malformed payload raises a
:class:`~stamen.protocols.errors.StamenError`.

Bounded decoding: before anything is decompressed or decoded, the stages' ``encoded_layout``
rules turn the tensor table into the container the encoder must have produced, exactly (dense,
fp16, int8, topk, lowrank, rqm and their compositions) or as an upper bound (sizes that depend on
the values: fedzip, compeft, dare, lora, frl_rank). A byte stage may decompress to exactly that
size, or at most that bound, and nothing more; a payload of any other size is refused unread.
Every array stage then allocates at most the table's elements per decoded tensor set.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..container import Skeleton, WireArray, pack_arrays, read_exact, skeleton, unpack_arrays, wire_size
from ..errors import CodecError, MalformedUpdate, StamenError, ValidationError
from ..tensors import TensorInfo, tensor_table
from .base import Arrays, ArrayStage, ByteStage, CodecSpec, Layout, StageSpec, lookup, resolve_params

__all__ = ["CodecPipeline"]

#: Fallback bound on container bytes per decoded element, for a stage without ``encoded_layout``.
_BYTES_PER_ELEMENT = 16
#: Fallback bound on container bytes per tensor for keys, dtype codes, dims and side arrays.
_BYTES_PER_TENSOR = 1024
_MAX_PLANS = 16  # decode plans kept per pipeline (tables in use at once)
_MAX_LISTED = 5


def _canonical_stage(stage: StageSpec) -> tuple[type[ArrayStage] | type[ByteStage], StageSpec]:
    if not isinstance(stage, StageSpec):
        raise CodecError(f"codec spec stages must be StageSpec, got {type(stage).__name__}")
    cls = lookup(stage.name)
    keys = [pair[0] for pair in stage.params]
    if len(set(keys)) != len(keys):
        raise CodecError(f"codec stage {stage.name!r}: a param is given twice")
    return cls, StageSpec(stage.name, resolve_params(cls, dict(stage.params)))


@dataclass(frozen=True)
class _Plan:
    """Decoding against one tensor table: the checked table, the container it implies (exact, or
    bounds), its size, its skeleton when exact, and the array stages' decoders in decode order."""

    table: tuple[TensorInfo, ...]
    layout: Layout | None
    size: int
    exact: bool
    frame: Skeleton | None
    decoders: list[ArrayStage]


class CodecPipeline:
    """Encoder/decoder for one :class:`CodecSpec`.

    Parameters
    ----------
    spec : CodecSpec
        One or more array stages, then at most one byte stage. Params are re-validated and
        completed, so ``self.spec`` is canonical.

    Raises
    ------
    CodecError
        For an unknown stage, bad params, no array stage, or a byte stage that is not last.
    """

    def __init__(self, spec: CodecSpec) -> None:
        if not isinstance(spec, CodecSpec) or not spec.stages:
            raise CodecError("CodecPipeline needs a CodecSpec with at least one stage")
        resolved = [_canonical_stage(stage) for stage in spec.stages]
        byte_at = [i for i, (cls, _) in enumerate(resolved) if issubclass(cls, ByteStage)]
        if len(byte_at) > 1 or (byte_at and byte_at[0] != len(resolved) - 1):
            raise CodecError(f"codec {spec.to_string()!r}: one byte stage at most, and only last")
        if byte_at == [0]:
            raise CodecError(f"codec {spec.to_string()!r}: needs an array stage, e.g. dense+zstd")
        self.spec = CodecSpec(tuple(stage for _, stage in resolved))
        self._array_stages: list[tuple[type[ArrayStage], StageSpec]] = []
        self._byte_stage: ByteStage | None = None
        for cls, stage in resolved:
            if issubclass(cls, ArrayStage):
                self._array_stages.append((cls, stage))
            else:
                self._byte_stage = cls(dict(stage.params))
        self._encoders = [cls(dict(stage.params)) for cls, stage in self._array_stages]
        self._plans: dict[int, _Plan] = {}  # id(table) -> its plan (which holds the table)
        # plain dense: encode is _indexed's float32 cast (Dense.encode would cast again), then pack
        self._plain = self._byte_stage is None and all(cls.name == "dense" for cls, _ in self._array_stages)
        #: False when no stage's ``encode`` reads its ``rng`` (:attr:`ArrayStage.uses_rng`)
        self.uses_rng = any(cls.uses_rng for cls, _ in self._array_stages)

    def __repr__(self) -> str:
        return f"CodecPipeline({self.spec.to_string()!r})"

    def encode(self, delta: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        """Encode named float tensors into payload bytes.

        Parameters
        ----------
        delta : Mapping[str, numpy.ndarray]
            Floating tensors (cast to float32); their order defines the table order. Non-finite
            values pass through ``dense``/``fp16``/``topk`` (the receiver's validation rejects
            them); ``int8`` refuses them.
        rng : numpy.random.Generator
            Source of randomness for stochastic stages (e.g. int8 rounding).

        Raises
        ------
        CodecError
            If a tensor is not floating or a stage cannot encode it.
        """
        if not isinstance(rng, np.random.Generator):
            raise CodecError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if self._plain and isinstance(delta, Mapping):
            frame = self._plan(tensor_table(delta)).frame
            packed = _pack_dense(delta, frame) if frame is not None else None
            if packed is not None:
                return packed
        arrays = _indexed(delta)
        if self._plain:
            return pack_arrays(arrays)
        for stage in self._encoders:
            try:
                arrays = stage.encode(arrays, rng)
            except CodecError as exc:  # stages see index keys; name the tensors for the caller
                legend = ", ".join(f"{i}={name!r}" for i, name in enumerate(delta))
                raise CodecError(f"{exc} [keys: {legend[:300]}]") from exc
        data = pack_arrays(arrays)
        return self._byte_stage.encode(data) if self._byte_stage is not None else data

    def decode(
        self, payload: bytes | memoryview, tensors: Sequence[TensorInfo], *, writable: bool = True
    ) -> dict[str, np.ndarray]:
        """Decode payload bytes into float32 tensors named and shaped by ``tensors``.

        Parameters
        ----------
        payload : bytes or memoryview
            Output of :meth:`encode` (untrusted). A read-only contiguous memoryview is used in
            place (zero copy); anything mutable is copied first.
        tensors : Sequence[TensorInfo]
            The tensor table the payload refers to, in encode order.
        writable : bool, default True
            False skips the final copy: tensors may then be read-only views into ``payload``
            (e.g. every ``dense`` tensor), for callers that only read them.

        Returns
        -------
        dict[str, numpy.ndarray]
            float32 arrays in table order, writable and not sharing memory unless ``writable``
            is False.

        Raises
        ------
        StamenError
            ``MalformedUpdate`` for any malformed payload, ``ValidationError`` for a bad table.
        """
        plan = self._plan(tensors)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise MalformedUpdate(f"payload must be bytes, got {type(payload).__name__}")
        data = _immutable(payload)
        if self._byte_stage is not None:
            data = self._byte_stage.decode(bytes(data), plan.size, exact=plan.exact)
        _check_size(len(data), plan.size, plan.exact)
        arrays = read_exact(data, plan.frame) if plan.frame is not None else None
        if arrays is not None and self._plain:  # the layout's float32 arrays: dense decodes as is
            return _named(arrays, plan.table, copy=writable)
        if arrays is None:
            arrays = unpack_arrays(data)
        if plan.layout is not None and plan.exact:
            _check_layout(arrays, plan.layout)
        for stage in plan.decoders:
            arrays = _decode_stage(stage, arrays)
        return _named(arrays, plan.table, copy=writable)

    def _plan(self, tensors: Sequence[TensorInfo]) -> _Plan:
        """What decoding against ``tensors`` needs besides the payload, worked out once per table
        object (tables are immutable; the receiver passes the same one for every client)."""
        hit = self._plans.get(id(tensors))
        if hit is not None and hit.table is tensors:
            return hit
        table = _checked_table(tensors)
        total = sum(info.size for info in table)
        layout = self.wire_layout(table)
        size, exact = wire_size(layout) if layout is not None else (_fallback_size(table), False)
        frame = skeleton(layout) if layout is not None and exact else None
        decoders = [
            cls(dict(stage.params), max_elements=total) for cls, stage in reversed(self._array_stages)
        ]
        plan = _Plan(table, layout, size, exact, frame, decoders)
        if type(tensors) is tuple:  # a list could change under the cache
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[id(tensors)] = plan
        return plan

    def wire_layout(self, tensors: Sequence[TensorInfo]) -> Layout | None:
        """The container :meth:`encode` makes for a delta with this tensor table.

        Returns
        -------
        Layout or None
            Entry by key, exact or as upper bounds (see :meth:`ArrayStage.encoded_layout`);
            None if a stage does not say.
        """
        f32 = np.dtype(np.float32)
        layout: Layout | None = {str(i): WireArray(f32, info.shape) for i, info in enumerate(tensors)}
        for stage in self._encoders:
            if layout is None:
                return None
            layout = stage.encoded_layout(layout)
        return layout

    def roundtrip(
        self, delta: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> tuple[bytes, dict[str, np.ndarray]]:
        """Encode ``delta`` and decode it again: the payload and what the receiver will see.

        The decoded tensors are what error-feedback schemes subtract from the local delta.
        """
        payload = self.encode(delta, rng)
        return payload, self.decode(payload, tensor_table(delta))


def _immutable(payload: bytes | bytearray | memoryview) -> bytes | memoryview:
    """``payload`` itself if nobody can change it under the decoder's views, else a copy."""
    if isinstance(payload, memoryview) and payload.readonly and payload.c_contiguous:
        return payload.cast("B")
    return payload if isinstance(payload, bytes) else bytes(payload)


def _fallback_size(table: tuple[TensorInfo, ...]) -> int:
    return _BYTES_PER_ELEMENT * sum(info.size for info in table) + _BYTES_PER_TENSOR * (len(table) + 1)


def _check_size(got: int, size: int, exact: bool) -> None:
    """The container's size against what the codec and the tensor table imply."""
    if got > size or (exact and got != size):
        want = "exactly" if exact else "at most"
        raise MalformedUpdate(f"container of {got} bytes; the codec and tensor table imply {want} {size}")


def _check_layout(arrays: Arrays, layout: Layout) -> None:
    """Every array of an exactly known container has its expected key, dtype and shape."""
    if list(arrays) != list(layout):
        raise MalformedUpdate(
            f"payload arrays {list(arrays)[:_MAX_LISTED]} differ from {list(layout)[:_MAX_LISTED]}"
        )
    for key, want in layout.items():
        arr = arrays[key]
        if arr.dtype != want.dtype or arr.shape != want.shape:
            got, implied = f"{arr.dtype}{list(arr.shape)}", f"{want.dtype}{list(want.shape)}"
            raise MalformedUpdate(f"payload array {key!r} is {got}, the codec implies {implied}")


def _indexed(delta: Mapping[str, np.ndarray]) -> Arrays:
    """Check the input tensors and rename them "0", "1", ... in order, as float32."""
    if not isinstance(delta, Mapping):
        raise CodecError(f"delta must be a mapping of name -> array, got {type(delta).__name__}")
    arrays: Arrays = {}
    for i, (name, value) in enumerate(delta.items()):
        arr = np.asarray(value)
        if not isinstance(name, str) or arr.dtype.kind != "f":
            raise CodecError(f"tensor {name!r}: codecs take str names and floating arrays")
        arrays[str(i)] = arr.astype(np.float32, copy=False)
    return arrays


_F32 = np.dtype("<f4")


def _pack_dense(delta: Mapping[str, np.ndarray], frame: Skeleton) -> bytes | None:
    """``pack_arrays(_indexed(delta))`` written around the skeleton of ``delta``'s own table (the
    same bytes: the count and each entry's head, then its little-endian float32 data); None for
    anything ``_indexed`` checks (a non-str name, a non-floating array): the plain path raises."""
    parts = [frame.pieces[0][1]]
    for (_, head), (name, value) in zip(frame.pieces[1:], delta.items(), strict=True):
        arr = value if type(value) is np.ndarray else np.asarray(value)
        if type(name) is not str or arr.dtype.kind != "f":
            return None
        parts.append(head)
        parts.append((arr if arr.dtype == _F32 else arr.astype(_F32)).tobytes())
    return b"".join(parts)


def _checked_table(tensors: Sequence[TensorInfo]) -> tuple[TensorInfo, ...]:
    table = tuple(tensors)
    if not all(isinstance(info, TensorInfo) for info in table):
        raise ValidationError("tensors must be a sequence of TensorInfo")
    if len({info.name for info in table}) != len(table):
        raise ValidationError("tensor table has duplicate names")
    return table


def _decode_stage(stage: ArrayStage, arrays: Arrays) -> Arrays:
    """Run one decode step, turning any stray numpy/Python error into MalformedUpdate."""
    try:
        return stage.decode(arrays)
    except StamenError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:
        raise MalformedUpdate(f"{stage.name}: cannot decode payload: {exc}") from exc


@functools.lru_cache(maxsize=64)
def _index_keys(n: int) -> list[str]:
    """``["0", "1", ..., str(n - 1)]``, the container keys of an ``n``-tensor table (callers only read it)."""
    return [str(i) for i in range(n)]


def _named(arrays: Arrays, table: tuple[TensorInfo, ...], *, copy: bool) -> dict[str, np.ndarray]:
    """Map index keys back to names; every tensor present, floating, with the right size.

    ``copy`` gives every tensor its own writable float32 buffer; without it, float32 arrays
    are returned as they are (possibly read-only views into the payload)."""
    expected = _index_keys(len(table))
    if list(arrays) != expected and set(arrays) != set(expected):  # the list: the usual case, fast
        missing = sorted(set(expected) - set(arrays))[:_MAX_LISTED]
        extra = sorted(set(arrays) - set(expected))[:_MAX_LISTED]
        raise MalformedUpdate(
            f"payload tensors do not match the table: missing {missing}, unexpected {extra}"
        )
    out: dict[str, np.ndarray] = {}
    for key, info in zip(expected, table, strict=True):
        arr = arrays[key]
        if arr.dtype.kind != "f" or arr.size != info.size:
            raise MalformedUpdate(
                f"tensor {info.name!r}: decoded {arr.dtype} with {arr.size} elements, table says {info.size}"
            )
        out[info.name] = arr.astype(np.float32, copy=copy).reshape(info.shape)
    return out
