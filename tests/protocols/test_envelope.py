"""Envelope framing, header validation, signatures, and fuzzing of ``unpack``."""

from __future__ import annotations

import dataclasses
import json
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.protocols import (
    SCHEMA_VERSION,
    Envelope,
    MalformedUpdate,
    SignatureError,
    Signer,
    StamenError,
    TensorInfo,
    Verifier,
    _header,
    pack,
    unpack,
)
from stamen.protocols.envelope import MAGIC

TABLE = (TensorInfo("layer.weight", (4, 6), "float32"), TensorInfo("layer.bias", (5,), "float32"))
ENV = Envelope(
    codec="dense",
    base_hash="ab" * 32,
    version=7,
    sender="client-3",
    tensors=TABLE,
    payload=bytes(range(40)),
    meta={"num_examples": 120, "loss": 0.25},
)
HEADER = (
    b'{"base":"' + b"ab" * 32 + b'","codec":"dense","len":40,"meta":{"loss":0.25,"num_examples":120},'
    b'"schema":1,"snd":"client-3","tensors":[["layer.weight",[4,6],"float32"],'
    b'["layer.bias",[5],"float32"]],"ver":7}'
)


def _frame(header: bytes, payload: bytes = b"", flags: int = 0) -> bytes:
    return MAGIC + struct.pack("<BI", flags, len(header)) + header + payload


def _accepts_or_stamen_error(data: bytes, verifier: Verifier | None = None) -> Envelope | None:
    try:
        return unpack(data, verifier)
    except StamenError:
        return None


def test_unsigned_layout_by_hand() -> None:
    data = pack(ENV)
    assert data == _frame(HEADER, ENV.payload)
    assert unpack(data) == ENV
    assert b" " not in HEADER and b"sha" not in HEADER


def test_pinned_sizes(signer: Signer) -> None:
    assert len(pack(ENV)) == 9 + len(HEADER) + 40 == 299
    signed = pack(ENV, signer)
    assert len(signed) == 299 + len(',"sha":""') + 64 + 8 + 64


def test_signed_roundtrip(signer: Signer) -> None:
    data = pack(ENV, signer)
    verifier = Verifier([signer.public_key_bytes()])
    env = unpack(data, verifier)
    assert env.key_id == signer.key_id and env.signature is not None and len(env.signature) == 64
    assert dataclasses.replace(env, key_id=None, signature=None) == ENV
    assert unpack(data) == env  # readable without a verifier; digest still checked
    assert pack(env, signer) == data  # deterministic signatures, key fields ignored by pack


def test_verifier_rejects_unsigned_and_foreign_keys(signer: Signer, other_signer: Signer) -> None:
    verifier = Verifier([signer.public_key_bytes()])
    with pytest.raises(SignatureError, match="not signed"):
        unpack(pack(ENV), verifier)
    with pytest.raises(SignatureError, match="unknown"):
        unpack(pack(ENV, other_signer), verifier)


def test_every_tampered_byte_of_a_signed_envelope_is_caught(signer: Signer) -> None:
    data = pack(ENV, signer)
    verifier = Verifier([signer.public_key_bytes()])
    for i in range(len(data)):
        for bit in (0, 7):
            tampered = bytearray(data)
            tampered[i] ^= 1 << bit
            expected = MalformedUpdate if i < len(MAGIC) else SignatureError
            with pytest.raises(expected):
                unpack(bytes(tampered), verifier)
    with pytest.raises(SignatureError):
        unpack(data + b"\x00", verifier)
    with pytest.raises(SignatureError):
        unpack(data[:-1], verifier)


def test_zero_copy_payload_and_authenticated_hook(signer: Signer, other_signer: Signer) -> None:
    """zero_copy returns a read-only view into the input; the hook runs only after the signature
    verified and before a tampered payload is refused."""
    data = pack(ENV, signer)
    verifier = Verifier([signer.public_key_bytes()])
    calls: list[int] = []
    env = unpack(data, verifier, zero_copy=True, on_authenticated=lambda: calls.append(1))
    assert calls == [1]
    assert isinstance(env.payload, memoryview) and env.payload.readonly
    assert env.payload.obj is data and bytes(env.payload) == ENV.payload
    assert isinstance(unpack(data, verifier).payload, bytes)  # default: an independent copy
    for forged in (pack(ENV, other_signer), pack(ENV), data[:-41] + bytes([data[-41] ^ 1]) + data[-40:]):
        with pytest.raises(SignatureError):
            unpack(forged, verifier, on_authenticated=lambda: calls.append(2))
    assert calls == [1]  # neither a foreign key, an unsigned nor a tampered-header envelope
    tampered_payload = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(SignatureError, match="digest"):
        unpack(tampered_payload, verifier, on_authenticated=lambda: calls.append(3))
    assert calls == [1, 3]  # signature held; the payload digest then refused it


def test_every_truncation_is_rejected(signer: Signer) -> None:
    for data in (pack(ENV), pack(ENV, signer)):
        for cut in range(len(data)):
            with pytest.raises(StamenError):
                unpack(data[:cut])


def test_huge_header_length_fails_fast_without_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused from the fixed fields alone: the header is never parsed and nothing is copied."""
    good, parsed = pack(ENV), list[int]()
    real_loads = _header.loads
    monkeypatch.setattr(_header, "loads", lambda raw: parsed.append(len(raw)) or real_loads(raw))
    big = MAGIC + struct.pack("<BI", 0, (1 << 20) + 1) + bytes((1 << 20) + 2)
    tracemalloc.start()
    for length in (2**32 - 1, (1 << 20) + 1):
        with pytest.raises(MalformedUpdate, match="header length"):
            unpack(MAGIC + struct.pack("<BI", 0, length) + b"{}" * 16)
    with pytest.raises(MalformedUpdate, match="header length"):
        unpack(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert parsed == [] and peak < 64 << 10  # a copy of the 1 MiB input would show here
    unpack(good)
    assert parsed == [len(HEADER)]  # the counter does see a header that is parsed


def _header_with(**changes: object) -> bytes:
    fields = json.loads(HEADER)
    for key, value in changes.items():
        if value is ...:
            fields.pop(key)
        else:
            fields[key] = value
    return json.dumps(fields, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested|JSON"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested|JSON"),
        (b"\xff\xfe", "JSON"),
        (b'{"ver":' + b"9" * 5000 + b"}", "JSON"),
        (b'{"ver":1,"ver":2}', "duplicate"),
        (b"[1,2]", "object"),
        (_header_with(ver=True), "ver"),
        (_header_with(ver=-1), "ver"),
        (_header_with(ver=1.0), "ver"),
        (_header_with(schema=2), "schema"),
        (_header_with(schema=True), "schema"),
        (_header_with(extra=1), "keys"),
        (_header_with(codec=...), "keys"),
        (_header_with(sha="00" * 32), "digest"),
        (_header_with(base="XYZ"), "base"),
        (_header_with(snd="x" * 129), "snd"),
        (_header_with(snd=5), "snd"),
        (_header_with(tensors=[["w", [-1], "float32"]]), "dims"),
        (_header_with(tensors=[["w", [2**32], "float32"]]), "dims"),
        (_header_with(tensors=[["w", [2**16, 2**16], "float32"]]), "elements"),
        (_header_with(tensors=[["w", [1] * 17, "float32"]]), "dims"),
        (_header_with(tensors=[["w", [2], "object"]]), "dtype"),
        (_header_with(tensors=[["w" * 257, [2], "float32"]]), "names"),
        (_header_with(tensors=[["w", [2], "float32"], ["w", [2], "float32"]]), "duplicate"),
        (_header_with(tensors=[["w", [2]]]), "entries"),
        (_header_with(tensors={"w": 1}), "table"),
        (_header_with(meta={"a": True}), "meta"),
        (_header_with(meta={"a": [1]}), "meta"),
        (_header_with(meta={"a": "x" * 5000}), "meta"),
        (_header_with(meta=[1]), "meta"),
        (HEADER.replace(b"0.25", b"NaN"), "constant"),
        (HEADER.replace(b"0.25", b"1e999"), "meta"),
        (_header_with(len=41), "payload"),
    ],
)
def test_header_validation(header: bytes, match: str) -> None:
    with pytest.raises(MalformedUpdate, match=match):
        unpack(_frame(header, ENV.payload))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": -1}, "ver"),
        ({"version": True}, "ver"),
        ({"sender": "s" * 129}, "snd"),
        ({"base_hash": "not-hex"}, "base"),
        ({"meta": {"k": float("nan")}}, "serialized"),
        ({"meta": {"k": "v" * 4000, "j": "v" * 1000}}, "meta"),
        ({"tensors": [("w", (2,), "float32")]}, "TensorInfo"),
        ({"payload": "text"}, "payload"),
        ({"schema": 2}, "schema"),
        ({"codec": "x" * 1025}, "codec"),
    ],
)
def test_pack_refuses_what_unpack_would_reject(changes: dict, match: str) -> None:
    with pytest.raises(MalformedUpdate, match=match):
        pack(dataclasses.replace(ENV, **changes))


def test_other_framing_errors() -> None:
    with pytest.raises(MalformedUpdate, match="magic"):
        unpack(b"STM\x02" + pack(ENV)[4:])
    with pytest.raises(MalformedUpdate, match="flags"):
        unpack(_frame(HEADER, ENV.payload, flags=2))
    with pytest.raises(MalformedUpdate, match="bytes"):
        unpack("text")
    assert unpack(bytearray(pack(ENV))) == ENV


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, MAGIC + data, MAGIC + b"\x00" + data, MAGIC + b"\x01" + data):
        _accepts_or_stamen_error(candidate)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(json.loads(HEADER)), "sha", "x"]), _json))
def test_fuzz_header_fields(changes: dict) -> None:
    fields = {**json.loads(HEADER), **changes}
    header = json.dumps(fields, separators=(",", ":")).encode()
    _accepts_or_stamen_error(_frame(header, ENV.payload))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_bit_flips(signer: Signer, data: st.DataObject) -> None:
    verifier = Verifier([signer.public_key_bytes()])
    for packed in (pack(ENV), pack(ENV, signer)):
        flipped = bytearray(packed)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(packed) * 8 - 1))
            flipped[i // 8] ^= 1 << (i % 8)
        _accepts_or_stamen_error(bytes(flipped))
        _accepts_or_stamen_error(bytes(flipped), verifier)


def test_schema_constant() -> None:
    assert SCHEMA_VERSION == 1 and ENV.schema == 1
