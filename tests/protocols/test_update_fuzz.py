"""Fuzzing ``decode_update`` with mutated envelopes of every codec: whatever the mutation (bit
flips anywhere, a payload cut or grown, a swapped codec, a forged tensor table, or a payload and
table rewritten together to claim a huge tensor), the only thing that may escape is a StamenError,
and whatever decodes has exactly the table's names and shapes. The address space is capped while
fuzzing, so a bound that stops holding shows up as an escaping MemoryError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_helpers import address_space_cap

from stamen.protocols import (
    CodecSpec,
    Envelope,
    StamenError,
    TensorInfo,
    decode_update,
    encode_update,
    pack,
    tensor_table,
    unpack,
)
from stamen.protocols.codecs import available
from stamen.protocols.codecs.bitpack import ByteReader, ByteWriter
from stamen.protocols.container import pack_arrays, unpack_arrays

CODECS = [
    "dense",
    "fp16",
    "int8",
    "topk(ratio=0.3)",
    "topk(ratio=0.3)+int8",
    "lowrank(rank=1)",
    "fedzip(density=0.5)",
    "compeft(density=0.5)",
    "dare(p=0.5)",
    "rqm",
    "lora",
    "frl_rank",
    "dense+zstd",
    "topk(ratio=0.3)+int8+zstd",
    "fedzip+zstd",
    "lora+int8+zstd",
]
_RNG = np.random.default_rng(0)
DELTA = {
    "w": _RNG.standard_normal((6, 8)).astype(np.float32),
    "b": _RNG.standard_normal(5).astype(np.float32),
    "z": np.zeros((3, 3), np.float32),  # lora's zero form; frl_rank's frozen tensor
}
RANKING = {"s": _RNG.permutation(12).astype(np.float32).reshape(3, 4), "z": np.zeros((2, 2), np.float32)}
FUZZ_MAX = 2**20  # the configurable model bound, small here so every example stays fast


def _valid(codec: str) -> bytes:
    delta = RANKING if codec == "frl_rank" else DELTA
    spec = CodecSpec.parse(codec)
    return encode_update(delta, spec, base_hash="ab" * 8, version=1, sender="s", rng=np.random.default_rng(1))


VALID = {codec: _valid(codec) for codec in CODECS}

dims = st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1))
tables = st.lists(
    st.builds(
        TensorInfo,
        st.sampled_from(["w", "b", "z", "s", "q"]),
        st.lists(dims, max_size=3).map(tuple),
        st.just("float32"),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda info: info.name,
)


_SHAPES = (".s", ".lz", ".ls")  # arrays holding a tensor's shape
_SIZED = (".fz", ".cp", ".rq", ".dm")  # blobs that start with the tensor's size as a varint


def _claimed(arr: np.ndarray, key: str, n: int) -> np.ndarray:
    if key.endswith(_SHAPES) and arr.dtype in (np.uint32, np.uint64) and arr.ndim == 1:
        return np.array([n], arr.dtype if n < 2**32 else np.uint64)
    if key.endswith(_SIZED) and arr.dtype == np.uint8 and arr.ndim == 1:
        reader = ByteReader(arr, key)
        try:
            reader.varint(2**64)
        except StamenError:
            return arr
        return ByteWriter().varint(n).raw(reader.rest()).array()
    return arr


def _claim(env: Envelope, n: int) -> Envelope:
    """Rewrite every size the payload states, and the table's first tensor, to ``n`` elements:
    the would-be allocation bomb that random mutations rarely build."""
    compressed = "+zstd(" in env.codec
    raw = zstandard.decompress(env.payload) if compressed else bytes(env.payload)
    arrays = {key: _claimed(arr, key, n) for key, arr in unpack_arrays(raw).items()}
    payload = pack_arrays(arrays)
    payload = zstandard.ZstdCompressor().compress(payload) if compressed else payload
    first = TensorInfo(env.tensors[0].name, (n,), "float32")
    return dataclasses.replace(env, payload=payload, tensors=(first, *env.tensors[1:]))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid envelope of some codec, then one or two mutations."""
    codec = draw(st.sampled_from(CODECS))
    data = VALID[codec]
    for _ in range(draw(st.integers(1, 2))):
        try:
            env = unpack(data)
        except StamenError:  # a flip broke the framing: nothing left to re-pack
            break
        kind = draw(st.sampled_from(["flip", "payload", "cut", "grow", "codec", "table", "claim"]))
        if kind == "claim":
            try:
                data = pack(_claim(env, draw(st.integers(2**20, 2**31 - 2**10))))
            except (StamenError, zstandard.ZstdError):  # an earlier mutation broke the payload
                break
            continue
        if kind == "flip":  # anywhere: framing, header JSON, payload
            buf = bytearray(data)
            for _ in range(draw(st.integers(1, 4))):
                buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
            data = bytes(buf)
            continue
        payload = bytearray(env.payload)
        if kind == "payload" and payload:  # keeps the header valid, so the decoders see it
            at = draw(st.integers(0, len(payload) - 1))
            payload[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del payload[draw(st.integers(0, len(payload))) :]
        elif kind == "grow":
            payload += draw(st.binary(min_size=1, max_size=16))
        env = dataclasses.replace(env, payload=bytes(payload))
        if kind == "codec":
            env = dataclasses.replace(env, codec=CodecSpec.parse(draw(st.sampled_from(CODECS))).to_string())
        if kind == "table":
            env = dataclasses.replace(env, tensors=tuple(draw(tables)))
        try:
            data = pack(env)
        except StamenError:  # e.g. a table beyond the header's limits: keep the last envelope
            break
    return data


def _decode_or_refuse(data: bytes, expected: tuple[TensorInfo, ...] | None) -> None:
    try:
        env, delta = decode_update(data, expected_tensors=expected, max_elements=FUZZ_MAX)
    except StamenError:
        return
    table = expected if expected is not None else env.tensors
    assert list(delta) == [info.name for info in table]
    assert all(delta[i.name].shape == i.shape and delta[i.name].dtype == np.float32 for i in table)


@pytest.fixture(autouse=True)
def _capped() -> Iterator[None]:
    with address_space_cap(1 << 30):
        yield


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_only_stamen_errors_escape_decode_update(data: bytes) -> None:
    _decode_or_refuse(data, None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_only_stamen_errors_escape_with_the_receivers_table(data: bytes) -> None:
    _decode_or_refuse(data, tensor_table(DELTA))


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_decodes_unmutated(codec: str) -> None:
    env, delta = decode_update(VALID[codec])
    assert list(delta) == [info.name for info in env.tensors]


def test_every_registered_stage_is_fuzzed() -> None:
    used = {stage.name for codec in CODECS for stage in CodecSpec.parse(codec).stages}
    assert used == set(available())


def test_the_fuzzer_reaches_the_decoders() -> None:
    """A payload byte changed under a valid header reaches decoding; guard against a fuzzer whose
    every mutation dies in the framing."""
    env = unpack(VALID["dense"])
    payload = bytearray(env.payload)
    payload[-1] ^= 0x01  # the top byte of z's last float32: 0.0 becomes 2**-125
    _, delta = decode_update(pack(dataclasses.replace(env, payload=bytes(payload))))
    assert float(delta["z"][-1, -1]) == 2.0**-125 and not delta["z"].reshape(-1)[:-1].any()
