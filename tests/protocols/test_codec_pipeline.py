"""CodecPipeline: index keys, table checks, input checks, fuzzing every built-in pipeline, and
adding a new codec without touching the pipeline."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_helpers import decode_by_stages, pinned_input, pipeline

from stamen.protocols import (
    CodecError,
    CodecPipeline,
    CodecSpec,
    MalformedUpdate,
    StamenError,
    TensorInfo,
    ValidationError,
    tensor_table,
)
from stamen.protocols.codecs import base
from stamen.protocols.codecs.base import Arrays, ArrayStage, register
from stamen.protocols.container import pack_arrays

PIPELINES = [
    "dense",
    "fp16",
    "topk(ratio=0.2)",
    "int8",
    "topk(ratio=0.2)+int8",
    "dense+zstd",
    "topk(ratio=0.2)+int8+zstd",
    "fp16+zstd",
    "int8+int8",
    "topk+topk",
    "int8+fp16",
]


def _valid(text: str) -> tuple[bytes, tuple[TensorInfo, ...]]:
    delta = pinned_input()
    return pipeline(text).encode(delta, np.random.default_rng(0)), tensor_table(delta)


@pytest.mark.parametrize("text", PIPELINES)
def test_roundtrip_matches_decode_and_hides_names(text: str) -> None:
    delta = {"a.very.long.tensor.name.weight": np.linspace(-1, 1, 50, dtype=np.float32)}
    p = pipeline(text)
    payload, seen = p.roundtrip(delta, np.random.default_rng(3))
    assert b"very.long" not in payload
    again = p.decode(payload, tensor_table(delta))
    assert list(seen) == list(again) == list(delta)
    np.testing.assert_array_equal(
        seen["a.very.long.tensor.name.weight"], again["a.very.long.tensor.name.weight"]
    )
    assert payload == p.encode(delta, np.random.default_rng(3))  # reproducible bit for bit


@pytest.mark.parametrize("text", ["dense", "int8", "dense+zstd"])
def test_read_only_decode_skips_copies_but_not_values(text: str) -> None:
    """writable=False (the edge runtime's path) gives the same values; for dense the tensors are
    then views into the payload itself (zero copy), the default gives independent copies."""
    delta = pinned_input()
    p, table = pipeline(text), tensor_table(delta)
    payload = p.encode(delta, np.random.default_rng(0))
    view = memoryview(payload)
    fast, safe = p.decode(view, table, writable=False), p.decode(view, table)
    for name in delta:
        np.testing.assert_array_equal(fast[name], safe[name])
        assert safe[name].flags.writeable and not np.shares_memory(safe[name], fast[name])
        in_payload = np.shares_memory(fast[name], np.frombuffer(payload, np.uint8))
        assert in_payload == (text == "dense")  # zstd output and int8 products are new buffers
    mutable = bytearray(payload)  # a mutable buffer is copied first: later writes cannot leak in
    got = p.decode(memoryview(mutable), table, writable=False)
    mutable[-4:] = b"\xff\xff\xff\xff"
    for name in delta:
        np.testing.assert_array_equal(got[name], safe[name])


def test_empty_update_and_empty_tensor() -> None:
    p = pipeline("topk+int8+zstd")
    _, out = p.roundtrip({}, np.random.default_rng(0))
    assert out == {}
    _, out = p.roundtrip({"e": np.zeros((0, 3), np.float32)}, np.random.default_rng(0))
    assert out["e"].shape == (0, 3)


def test_decode_checks_the_table() -> None:
    payload, table = _valid("dense")
    extra = (*table, TensorInfo("extra", (1,), "float32"))
    wrong = (table[0], TensorInfo("layer.bias", (6,), "float32"))
    for other in (extra, table[:1], wrong):  # the container's size gives every one away, unread
        with pytest.raises(MalformedUpdate, match="the codec and tensor table imply exactly"):
            pipeline("dense").decode(payload, other)
    # behind that, the naming step (what catches data-dependent codecs) names the difference
    with pytest.raises(MalformedUpdate, match="missing"):
        decode_by_stages("dense", payload, extra)
    with pytest.raises(MalformedUpdate, match="unexpected"):
        decode_by_stages("dense", payload, table[:1])
    with pytest.raises(MalformedUpdate, match=r"layer\.bias"):
        decode_by_stages("dense", payload, wrong)
    reshaped = (TensorInfo("layer.weight", (6, 4), "float32"), table[1])  # same size, same bytes
    with pytest.raises(MalformedUpdate, match=r"'0' is float32\[4, 6\], the codec implies float32\[6, 4\]"):
        pipeline("dense").decode(payload, reshaped)
    assert decode_by_stages("dense", payload, reshaped)["layer.weight"].shape == (6, 4)
    with pytest.raises(ValidationError, match="duplicate"):
        pipeline("dense").decode(payload, (table[0], table[0]))
    ints = pack_arrays({"0": np.zeros(3, np.int32)})
    with pytest.raises(MalformedUpdate, match="int32"):
        pipeline("dense").decode(ints, [TensorInfo("x", (3,), "float32")])
    with pytest.raises(MalformedUpdate, match="bytes"):
        pipeline("dense").decode("text", table)


def test_encode_checks_inputs() -> None:
    p, rng = pipeline("dense"), np.random.default_rng(0)
    with pytest.raises(CodecError, match="floating"):
        p.encode({"steps": np.array([1, 2])}, rng)
    nan = {"w": np.array([1.0, np.nan, np.inf], np.float32)}
    _, out = p.roundtrip(nan, rng)  # dense carries them; the receiver's validation rejects them
    assert np.isnan(out["w"][1]) and np.isinf(out["w"][2])
    for text in ("fp16", "topk(ratio=0.7)"):
        _, out = pipeline(text).roundtrip(nan, rng)
        assert np.isnan(out["w"][1]) and np.isinf(out["w"][2])
    with pytest.raises(CodecError, match="non-finite"):
        pipeline("int8").encode(nan, rng)
    with pytest.raises(CodecError, match="Generator"):
        p.encode(pinned_input(), 0)
    assert p.encode({"w": np.array([1.0, 2.0])}, rng)  # float64 is cast to float32
    with pytest.raises(CodecError):
        CodecPipeline("dense")


@pytest.mark.parametrize("text", PIPELINES)
def test_every_truncation_and_bit_flip_gives_a_result_or_stamen_error(text: str) -> None:
    payload, table = _valid(text)
    p = pipeline(text)
    candidates = [payload[:cut] for cut in range(len(payload))] + [payload + b"\x00"]
    for i in range(0, len(payload) * 8, 3):
        flipped = bytearray(payload)
        flipped[i // 8] ^= 1 << (i % 8)
        candidates.append(bytes(flipped))
    for data in candidates:
        try:
            out = p.decode(data, table)
        except StamenError:
            continue
        assert [a.shape for a in out.values()] == [(4, 6), (5,)]
        assert all(a.dtype == np.float32 for a in out.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), st.sampled_from(PIPELINES))
def test_fuzz_random_payloads(data: bytes, text: str) -> None:
    with contextlib.suppress(StamenError):
        pipeline(text).decode(data, tensor_table(pinned_input()))


def test_a_new_codec_needs_no_pipeline_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register
    class Negate(ArrayStage):
        name = "negate"

        def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
            return {k: -a if a.dtype.kind == "f" else a for k, a in arrays.items()}

        def decode(self, arrays: Arrays) -> Arrays:
            return {k: -a if a.dtype.kind == "f" else a for k, a in arrays.items()}

    p = CodecPipeline(CodecSpec.parse("negate+topk(ratio=0.5)+zstd"))
    _, out = p.roundtrip({"x": np.array([1.0, -4.0], np.float32)}, np.random.default_rng(0))
    assert out["x"].tolist() == [0.0, -4.0]
