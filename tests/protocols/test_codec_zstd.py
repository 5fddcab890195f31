"""Codec trio for ``zstd``: a pinned frame, lossless property, bounded decoding (zip bombs, with and
without a declared content size), bounded by work and memory (never by wall-clock time)."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator

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


class _Counting:
    """Stands in for ``zstandard.ZstdDecompressor`` and counts the decompression calls made."""

    calls: list[str] = []  # noqa: RUF012  (reset by the fixture)

    def __init__(self, **kwargs: object) -> None:
        self._inner = _REAL(**kwargs)

    def decompress(self, *args: object, **kwargs: object) -> bytes:
        self.calls.append("decompress")
        return self._inner.decompress(*args, **kwargs)

    def stream_reader(self, *args: object, **kwargs: object) -> object:
        self.calls.append("stream_reader")
        return self._inner.stream_reader(*args, **kwargs)


_REAL = zstandard.ZstdDecompressor


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setattr(zstandard, "ZstdDecompressor", _Counting)
    _Counting.calls = []
    yield _Counting.calls


def _peak(fn: object, *args: object) -> tuple[BaseException | None, int]:
    """Run ``fn(*args)``; the exception it raised (or None) and its traced allocation peak in bytes."""
    tracemalloc.start()
    try:
        fn(*args)  # type: ignore[operator]
        error = None
    except StamenError as exc:
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


def test_pinned_frame_decodes() -> None:
    assert Zstd().decode(_FRAME, max_size=60) == b"stamen" * 10
    assert Zstd().decode(_FRAME, max_size=60, exact=True) == b"stamen" * 10
    with pytest.raises(MalformedUpdate, match=r"content size 60 bytes, .* imply at most 59"):
        Zstd().decode(_FRAME, max_size=59)
    with pytest.raises(MalformedUpdate, match=r"content size 60 bytes, .* imply exactly 61"):
        Zstd().decode(_FRAME, max_size=61, exact=True)


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


def test_bomb_is_rejected_unread_and_without_allocating(bomb: bytes, calls: list[str]) -> None:
    """A 256 MiB bomb is refused from its frame header: no decompression call, ~no memory."""
    error, peak = _peak(Zstd().decode, bomb, 1 << 20)
    assert isinstance(error, MalformedUpdate) and "content size 268435456 bytes" in str(error)
    table = [TensorInfo("w", (1000,), "float32")]
    error, peak_pipeline = _peak(pipeline("dense+zstd").decode, bomb, table)
    assert isinstance(error, MalformedUpdate) and "imply exactly 4007" in str(
        error
    )  # 4000 + 7 container bytes
    assert calls == [] and max(peak, peak_pipeline) < 256 << 10


def test_frames_without_content_size_are_streamed_with_a_hard_cap(calls: list[str]) -> None:
    """No declared size: streamed in 1 MiB pieces, given up one byte past the cap."""
    error, peak = _peak(Zstd().decode, _bomb(64 << 20, content_size=False), 1 << 20)
    assert isinstance(error, MalformedUpdate) and "more than the 1048576 bytes" in str(error)
    assert calls == ["stream_reader"] and peak < 3 << 20  # the 1 MiB piece, not 64 MiB
    data = bytes(range(256)) * 40
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert zstandard.get_frame_parameters(unsized).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert Zstd().decode(unsized, max_size=len(data), exact=True) == data
    with pytest.raises(MalformedUpdate, match="imply exactly"):
        Zstd().decode(unsized, max_size=len(data) + 1, exact=True)
    with pytest.raises(MalformedUpdate, match="more than"):
        Zstd().decode(unsized, max_size=len(data) - 1)


def test_frames_with_extras_are_rejected() -> None:
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
