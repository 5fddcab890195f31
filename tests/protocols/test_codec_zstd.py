"""Codec trio for ``zstd``: a pinned frame, lossless property, bounded decoding (zip bombs)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import pinned_input, pipeline, roundtrip

from stamen.protocols import CodecError, CodecSpec, MalformedUpdate, StamenError, TensorInfo
from stamen.protocols.codecs.zstd import Zstd

# A standard zstd frame of b"stamen" * 10 (level 3), frozen here so that the test does not
# depend on the compressor's exact output across library versions.
_FRAME = bytes.fromhex("28b52ffd203c650000307374616d656e0100cb598a")


def _bomb(claimed: int, content_size: bool = True) -> bytes:
    """A few KiB that decompress to ``claimed`` zero bytes."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    obj = cctx.compressobj(size=claimed if content_size else -1)
    chunk = bytes(1 << 20)
    return b"".join([obj.compress(chunk) for _ in range(claimed >> 20)] + [obj.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _bomb(256 << 20)


def test_pinned_frame_decodes() -> None:
    assert Zstd().decode(_FRAME, max_size=60) == b"stamen" * 10
    with pytest.raises(MalformedUpdate, match="exceeds"):
        Zstd().decode(_FRAME, max_size=59)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 9))
def test_lossless_property(data: bytes, level: int) -> None:
    stage = Zstd({"level": level})
    assert stage.decode(stage.encode(data), max_size=len(data)) == data


def test_pipeline_compresses_low_entropy_payloads() -> None:
    delta = {"z": np.zeros((64, 64), np.float32)}
    plain, _ = roundtrip("dense", delta)
    packed, out = roundtrip("dense+zstd", delta)
    assert len(packed) < len(plain) / 50 and not out["z"].any()
    packed, out = roundtrip("topk(ratio=0.1)+int8+zstd(level=9)", pinned_input())
    assert out["layer.weight"].shape == (4, 6)


def test_bomb_is_rejected_fast_and_without_allocating(bomb: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(MalformedUpdate, match="exceeds"):
        Zstd().decode(bomb, max_size=1 << 20)
    table = [TensorInfo("w", (1000,), "float32")]
    with pytest.raises(MalformedUpdate):
        pipeline("dense+zstd").decode(bomb, table)
    assert time.perf_counter() - start < 0.5


def test_frames_without_content_size_or_with_extras_are_rejected() -> None:
    with pytest.raises(MalformedUpdate, match="content size"):
        Zstd().decode(_bomb(16 << 20, content_size=False), max_size=1 << 20)
    with pytest.raises(MalformedUpdate):
        Zstd().decode(_FRAME + b"\x00", max_size=1000)
    with pytest.raises(MalformedUpdate):
        Zstd().decode(_FRAME + _FRAME, max_size=1000)


def test_level_is_range_checked() -> None:
    with pytest.raises(CodecError, match="level"):
        CodecSpec.parse("dense+zstd(level=23)")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_only_stamen_errors(data: bytes) -> None:
    for prefix in (b"", _FRAME[:4]):
        with contextlib.suppress(StamenError):
            Zstd().decode(prefix + data, max_size=4096)


def test_every_bit_flip_of_a_frame_is_handled() -> None:
    frame = Zstd().encode(bytes(range(256)) * 4)
    for i in range(len(frame) * 8):
        flipped = bytearray(frame)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            out = Zstd().decode(bytes(flipped), max_size=1024)
            assert len(out) <= 1024
        except StamenError:
            pass
