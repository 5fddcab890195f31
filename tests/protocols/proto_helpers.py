"""Helpers shared by the protocols tests (imported as a plain module: pytest puts this folder
on sys.path)."""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stamen.protocols import CodecPipeline, CodecSpec, MalformedUpdate, TensorInfo, tensor_table
from stamen.protocols.codecs.base import ArrayStage, lookup
from stamen.protocols.codecs.pipeline import _decode_stage, _named
from stamen.protocols.container import unpack_arrays


def pinned_input() -> dict[str, np.ndarray]:
    """A deterministic two-tensor delta that does not depend on any RNG stream."""
    return {
        "layer.weight": ((np.arange(24, dtype=np.float32) - 11.5) / 7).reshape(4, 6),
        "layer.bias": np.linspace(-1, 1, 5, dtype=np.float32),
    }


def pipeline(text: str) -> CodecPipeline:
    return CodecPipeline(CodecSpec.parse(text))


def container_of(text: str, delta: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays a codec puts on the wire (for codecs without a byte stage)."""
    return unpack_arrays(pipeline(text).encode(delta, np.random.default_rng(seed)))


def roundtrip(text: str, delta: dict[str, np.ndarray], seed: int = 0) -> tuple[bytes, dict]:
    p = pipeline(text)
    payload = p.encode(delta, np.random.default_rng(seed))
    return payload, p.decode(payload, tensor_table(delta))


@contextlib.contextmanager
def address_space_cap(headroom: int = 1 << 30) -> Iterator[None]:
    """On Linux, cap the process's address space at its current size plus ``headroom`` bytes, so
    that a decoder regression fails with MemoryError instead of exhausting a shared machine."""
    if not sys.platform.startswith("linux"):
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def layout(payload: bytes) -> list[tuple[str, str, tuple[int, ...]]]:
    """(key, dtype, shape) of every array in a container, in order: what a pinned payload pins
    besides values (its bytes may differ across machines wherever floating-point work precedes them)."""
    return [(key, arr.dtype.name, arr.shape) for key, arr in unpack_arrays(payload).items()]


def decode_by_stages(text: str, data: bytes, table: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    """Decode a container with the array stages of ``text`` alone, then name the tensors as the
    pipeline does: the pipeline's container size and layout checks are skipped, so each stage's own
    checks (what guards the data-dependent codecs) are what a hostile container meets."""
    arrays = unpack_arrays(data)
    budget = sum(info.size for info in table)
    for stage in reversed(CodecSpec.parse(text).stages):
        cls = lookup(stage.name)
        assert issubclass(cls, ArrayStage), "containers are checked without a byte stage"
        arrays = _decode_stage(cls(dict(stage.params), max_elements=budget), arrays)
    return _named(arrays, tuple(table), copy=True)


def refused(text: str, data: bytes, table: Sequence[TensorInfo], match: str) -> None:
    """The pipeline refuses a hostile container, and so do the stages' own checks, with ``match``."""
    with pytest.raises(MalformedUpdate):
        pipeline(text).decode(data, table)
    with pytest.raises(MalformedUpdate, match=match):
        decode_by_stages(text, data, table)


def header_bound(delta: dict[str, np.ndarray], arrays_per_tensor: int, suffix: int) -> int:
    """Container bytes besides the data: count + per array (key, dtype, ndim, varint dims)."""
    total = 10
    for i, arr in enumerate(delta.values()):
        per = 3 + len(str(i)) + suffix + 5 * arr.ndim
        total += arrays_per_tensor * per + 5 * arr.ndim  # + shape side arrays (topk)
    return total


def float_deltas(max_abs: float = 1e30) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """1..3 named finite float32 tensors of rank 0..3 (sides 0..7)."""
    bound = float(np.float32(max_abs))
    elements = st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False)
    arrays = hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7),
        elements=elements,
    )
    return st.dictionaries(st.text(min_size=1, max_size=20), arrays, min_size=1, max_size=3)
