"""Allocation bombs through the public API: ``decode_update`` and ``unpack`` refuse each with a
StamenError that says what is wrong, before allocating anything near what the input claims.

Each bomb is a few hundred bytes to a few hundred kB that used to make the decoder allocate
gigabytes (issue #13 §2). Memory is measured with tracemalloc (numpy reports its buffers to it),
and the process's address space is capped while a bomb is decoded, so that a regression fails
with MemoryError here instead of exhausting the machine.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import zstandard
from proto_helpers import address_space_cap

from stamen.protocols import (
    CodecSpec,
    Envelope,
    MalformedUpdate,
    StamenError,
    TensorInfo,
    ValidationError,
    decode_update,
    encode_update,
    pack,
    unpack,
)
from stamen.protocols.container import pack_arrays
from stamen.protocols.update import MAX_MODEL_ELEMENTS


@contextlib.contextmanager
def _capped_and_traced() -> Iterator[Callable[[], int]]:
    """Trace allocations, with the address space capped 1 GiB above its current size."""
    with address_space_cap(1 << 30):
        tracemalloc.start()
        try:
            yield lambda: tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def _envelope(codec: str, tensors: list[tuple[str, tuple[int, ...]]], payload: bytes) -> bytes:
    table = tuple(TensorInfo(name, shape, "float32") for name, shape in tensors)
    env = Envelope(codec=codec, base_hash="", version=1, sender="x", tensors=table, payload=payload)
    return pack(env)


def _zeros_frame(size: int, content_size: bool = True) -> bytes:
    """A zstd frame of ``size`` zero bytes: about 32 bytes per MiB."""
    obj = zstandard.ZstdCompressor(level=1, write_content_size=content_size).compressobj(
        size=size if content_size else -1
    )
    chunk, parts = bytes(1 << 20), []
    for start in range(0, size, len(chunk)):
        parts.append(obj.compress(chunk[: min(len(chunk), size - start)]))
    return b"".join([*parts, obj.flush()])


def _topk_giant() -> bytes:
    """162 bytes: one kept entry of a claimed 2**31-element tensor (8 GiB once densified)."""
    wire = {
        "0.i": np.array([0], np.uint32),
        "0.v": np.ones(1, np.float32),
        "0.s": np.array([2**31], np.uint32),
    }
    return _envelope("topk(ratio=1e-300)", [("w", (2**31,))], pack_arrays(wire))


SMALL = [("w", (1000,))]  # 4,007 container bytes under dense
MODEL = [("w", (512, 512)), ("b", (512,))]  # 1 MiB of float32: the server's own table

BOMBS: dict[str, tuple[Callable[[], bytes], dict[str, object], type[StamenError], str]] = {
    # without expected_tensors the envelope's own table is the bound, and it is too large
    "topk 8 GiB claim": (
        _topk_giant,
        {},
        ValidationError,
        "holds 2147483648 elements, more than max_elements",
    ),
    "dense+zstd 6 GiB claim": (
        lambda: _envelope("dense+zstd", [("w", (3 * 2**29,))], _zeros_frame(1 << 20)),
        {},
        ValidationError,
        "holds 1610612736 elements",
    ),
    # within the size bound, the frame must decompress to exactly what the codec and table imply
    "zstd 1 GiB frame, 1000-element table": (
        lambda: _envelope("dense+zstd", SMALL, _zeros_frame(1 << 30)),
        {},
        MalformedUpdate,
        "content size 1073741824 bytes, the codec and tensor table imply exactly 4007",
    ),
    "zstd 4x the server's model": (
        lambda: _envelope("dense+zstd", MODEL, _zeros_frame(4 * 4 * (512 * 512 + 512))),
        {"expected_tensors": tuple(TensorInfo(n, s, "float32") for n, s in MODEL)},
        MalformedUpdate,
        "content size 4202496 bytes, the codec and tensor table imply exactly 1050639",
    ),
    "zstd without content size": (
        lambda: _envelope("dense+zstd", SMALL, _zeros_frame(64 << 20, content_size=False)),
        {},
        MalformedUpdate,
        "decompresses to more than the 4007 bytes",
    ),
    # data-dependent codecs: each stage's element budget holds before it allocates
    "lora zero tensor of 2**32 - 1": (
        lambda: _envelope("lora", SMALL, pack_arrays({"0.lz": np.array([2**32 - 1], np.uint32)})),
        {},
        MalformedUpdate,
        "4294967295 elements exceeds the limit",
    ),
    "dare mask of 2**40": (
        lambda: _envelope(
            "dare",
            SMALL,
            pack_arrays(
                {
                    "0.dm": np.array([128, 128, 128, 128, 128, 32] + [0] * 8, np.uint8),
                    "0.dv": np.ones(1, np.float32),
                }
            ),
        ),
        {},
        MalformedUpdate,
        "exceeds the limit",
    ),
    "rqm blob of 2**40": (
        lambda: _envelope(
            "rqm", SMALL, pack_arrays({"0.rq": np.array([128, 128, 128, 128, 128, 32], np.uint8)})
        ),
        {},
        MalformedUpdate,
        "container of 15 bytes; the codec and tensor table imply exactly 512",
    ),
    "fedzip blob of 2**40": (
        lambda: _envelope(
            "fedzip", SMALL, pack_arrays({"0.fz": np.array([128, 128, 128, 128, 128, 32], np.uint8)})
        ),
        {},
        MalformedUpdate,
        "value 1099511627776 exceeds the limit 1000",
    ),
    "frl_rank shape of 2**31": (
        lambda: _envelope(
            "frl_rank",
            SMALL,
            pack_arrays({"0.p": np.zeros(0, np.uint8), "0.s": np.array([2**16, 2**15], np.uint32)}),
        ),
        {},
        StamenError,
        "2147483648 elements exceeds the limit",
    ),
    "lowrank factors of a 2**32 matrix": (
        lambda: _envelope(
            "lowrank(rank=1)",
            [("w", (6, 7))],
            pack_arrays({"0.lb": np.ones((2**16, 1), np.float32), "0.la": np.ones((1, 2**16), np.float32)}),
        ),
        {},
        MalformedUpdate,
        "container of 524311 bytes; the codec and tensor table imply exactly 71",
    ),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused_with_a_clear_error_and_little_memory(name: str) -> None:
    make, kwargs, error, message = BOMBS[name]
    data = make()
    with _capped_and_traced() as peak, pytest.raises(error, match=message):
        decode_update(data, **kwargs)  # type: ignore[arg-type]
    assert peak() < len(data) + (256 << 10), f"{name}: {peak()} bytes traced for {len(data)} input bytes"


def test_max_elements_is_configurable_and_the_expected_table_replaces_it() -> None:
    wire = {
        "0.i": np.array([0], np.uint32),
        "0.v": np.ones(1, np.float32),
        "0.s": np.array([2**17], np.uint32),
    }
    data = _envelope("topk(ratio=1e-300)", [("w", (2**17,))], pack_arrays(wire))
    with pytest.raises(ValidationError, match="holds 131072 elements, more than max_elements=131071"):
        decode_update(data, max_elements=2**17 - 1)
    _, delta = decode_update(data, max_elements=2**17)
    assert delta["w"][0] == 1.0 and np.count_nonzero(delta["w"]) == 1
    table = (TensorInfo("w", (2**17,), "float32"),)
    _, delta = decode_update(data, max_elements=0, expected_tensors=table)  # the receiver's table rules
    assert delta["w"].shape == (2**17,)
    assert MAX_MODEL_ELEMENTS == 2**26


def test_a_legal_claim_costs_a_small_multiple_of_the_model_it_claims() -> None:
    """163 bytes may still claim a model (top-k of one entry), but decoding it costs what that
    model costs: the float32 tensor plus the copy handed to the caller."""
    elements = 2**20
    wire = {
        "0.i": np.array([0], np.uint32),
        "0.v": np.ones(1, np.float32),
        "0.s": np.array([elements], np.uint32),
    }
    data = _envelope("topk(ratio=1e-300)", [("w", (elements,))], pack_arrays(wire))
    with _capped_and_traced() as peak:
        _, delta = decode_update(data)
    assert delta["w"].shape == (elements,)
    assert peak() <= 2 * 4 * elements + (64 << 10)


def test_unpack_bombs_are_refused_with_little_memory() -> None:
    # a 1 MiB header of empty JSON lists (the largest header allowed): parsed, then refused
    lists = b"[" + b",".join([b"[]"] * ((1 << 20) // 3 - 1)) + b"]"
    cases = [
        (b"STM\x01\x00" + (2**32 - 1).to_bytes(4, "little") + b"{}", "header length"),
        (b"STM\x01\x00" + len(lists).to_bytes(4, "little") + lists, "not a JSON object"),
        (b"STM\x01\x00" + (10**4 + 2).to_bytes(4, "little") + b"[" * 10**4 + b"]]", "nested too deeply"),
    ]
    for data, message in cases:
        with _capped_and_traced() as peak, pytest.raises(MalformedUpdate, match=message):
            unpack(data)
        assert peak() < 24 * len(data) + (1 << 20), f"{message}: {peak()} bytes for {len(data)}"


MEMORY_CODECS = [
    "dense",
    "fp16",
    "int8",
    "topk(ratio=0.1)+int8+zstd",
    "lowrank(rank=8)",
    "fedzip",
    "fedzip(position=absolute)",
    "compeft",
    "compeft(density=1.0)",
    "dare(p=0.1)",
    "rqm(m=256)",
    "lora",
    "frl_rank",
]


@pytest.mark.parametrize("codec", MEMORY_CODECS)
def test_decoding_costs_a_small_multiple_of_model_and_payload(codec: str) -> None:
    """Legal payloads too: every codec decodes within 8 x (model + payload) bytes of memory."""
    n = 1 << 18
    rng = np.random.default_rng(0)
    values = rng.permutation(n) if codec == "frl_rank" else rng.standard_normal(n)
    delta = {"w": values.astype(np.float32).reshape(512, 512), "b": np.ones(1000, np.float32)}
    if codec == "frl_rank":
        delta["b"] = np.zeros(1000, np.float32)  # a frozen tensor next to the ranking
    spec = CodecSpec.parse(codec)
    data = encode_update(delta, spec, base_hash="", version=1, sender="x", rng=rng)
    model = 4 * (n + 1000)
    with _capped_and_traced() as peak:
        decode_update(data)
    assert peak() <= 8 * (model + len(data)), f"{codec}: {peak() / model:.1f} x the model"
