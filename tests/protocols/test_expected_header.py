"""Header templates (``pack``) and the receiver's expected-header path (``unpack_expected``,
``decode_expected``) against the strict path they shortcut (issue #15).

The expected path may only ever answer what the strict path answers, or None (then the strict
path runs): it never accepts an envelope the strict path refuses, never reads other fields, and
never decodes a payload whose header is not the one expected.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.protocols import (
    CodecSpec,
    Envelope,
    SignatureError,
    Signer,
    StamenError,
    TensorInfo,
    Verifier,
    _header,
    decode_expected,
    decode_update,
    encode_update,
    pack,
    tensor_table,
    unpack,
)
from stamen.protocols._template import header_template
from stamen.protocols.envelope import unpack_expected

BASE = "ab" * 32
TABLE = (TensorInfo("fc1.weight", (4, 3), "float32"), TensorInfo("fc1.bias", (4,), "float32"))


def _fields(sender: str, digest: str | None, **changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "schema": _header.SCHEMA_VERSION,
        "codec": "dense",
        "base": BASE,
        "ver": 7,
        "snd": sender,
        "tensors": TABLE,
        "meta": {},
        "len": 61,
        "sha": digest,
    }
    return {**fields, **changes}


@settings(max_examples=200, deadline=None)
@given(sender=st.text(max_size=128), signed=st.booleans())
def test_a_filled_template_is_the_serialized_header(sender: str, signed: bool) -> None:
    """Any sender (unicode, quotes, control characters, the marker's own text): the same bytes as
    the canonical writer's."""
    digest = hashlib.sha256(sender.encode("utf-8", "surrogatepass")).hexdigest() if signed else None
    tpl = header_template("dense", BASE, 7, TABLE, 61, signed)
    assert tpl is not None
    assert tpl.fill(sender, digest) == _header.serialize(_fields(sender, digest), signed=signed)


def test_a_surrogate_pair_sender_takes_the_strict_path() -> None:
    """``"\\ud83d\\ude00"`` (two code points) is written as the escape of ``"😀"``, which the strict
    path reads back: a reply from client ``"\\ud83d\\ude00"`` must not match by bytes (review)."""
    pair = "\ud83d\ude00"
    data = pack(_envelope(sender="\U0001f600"))
    assert unpack_expected(data, "dense", BASE, 7, pair, TABLE) is None
    assert unpack(data).sender != pair
    tpl = header_template("dense", BASE, 7, TABLE, 61, False)
    assert tpl is not None and tpl.fill(pair, None) is None


def test_a_template_refuses_what_the_writer_refuses() -> None:
    """Invalid fields give no template; a bad sender or a misplaced digest fills nothing."""
    assert header_template("dense", "XYZ", 7, TABLE, 61, False) is None  # base is not hex
    assert header_template("dense", BASE, -1, TABLE, 61, False) is None
    assert header_template("dense", BASE, 7, list(TABLE), 61, False) is None  # type: ignore[arg-type]
    tpl = header_template("dense", BASE, 7, TABLE, 61, False)
    assert tpl is not None
    assert tpl.fill("x" * 129, None) is None and tpl.fill(3, None) is None
    assert tpl.fill("c", "0" * 64) is None
    signed = header_template("dense", BASE, 7, TABLE, 61, True)
    assert signed is not None and signed.fill("c", None) is None


def _envelope(sender: str = "client-3", version: int = 7, payload: bytes = b"\x01" * 61) -> Envelope:
    return Envelope("dense", BASE, version, sender, TABLE, payload)


def _same(a: Envelope, b: Envelope) -> bool:
    return (a.codec, a.base_hash, a.version, a.sender, a.tensors, bytes(a.payload), dict(a.meta)) == (
        b.codec,
        b.base_hash,
        b.version,
        b.sender,
        b.tensors,
        bytes(b.payload),
        dict(b.meta),
    ) and (a.key_id, a.signature) == (b.key_id, b.signature)


@pytest.mark.parametrize("signed", [False, True])
def test_the_expected_envelope_is_what_unpack_reads(signed: bool, signer: Signer) -> None:
    key = signer if signed else None
    verifier = Verifier([signer.public_key_bytes()]) if signed else None
    data = pack(_envelope(), key)
    got = unpack_expected(data, "dense", BASE, 7, "client-3", TABLE, verifier)
    assert got is not None and _same(got, unpack(data, verifier))


@pytest.mark.parametrize(
    "change",
    [
        {"codec": "fp16"},
        {"base_hash": "cd" * 32},
        {"version": 8},
        {"sender": "client-4"},
        {"tensors": (TensorInfo("fc1.weight", (3, 4), "float32"), TABLE[1])},
    ],
)
def test_any_other_field_is_not_the_expected_envelope(change: dict[str, object]) -> None:
    expect = {"codec": "dense", "base_hash": BASE, "version": 7, "sender": "client-3", "tensors": TABLE}
    data = pack(_envelope())
    assert unpack_expected(data, **{**expect, **change}) is None  # type: ignore[arg-type]
    with_meta = pack(Envelope("dense", BASE, 7, "client-3", TABLE, b"\x01" * 61, {"n": 1}))
    assert unpack_expected(with_meta, **expect) is None  # type: ignore[arg-type]


def test_a_bad_signature_is_the_strict_paths_error(signer: Signer, other_signer: Signer) -> None:
    data = pack(_envelope(), other_signer)
    verifier = Verifier([signer.public_key_bytes()])
    with pytest.raises(SignatureError):
        unpack_expected(data, "dense", BASE, 7, "client-3", TABLE, verifier)
    assert unpack_expected(pack(_envelope()), "dense", BASE, 7, "client-3", TABLE, None) is not None
    with pytest.raises(SignatureError):  # unsigned input where a signature is required
        unpack_expected(pack(_envelope()), "dense", BASE, 7, "client-3", TABLE, verifier)


def _strict(data: bytes, verifier: Verifier | None) -> object:
    try:
        return unpack(data, verifier)
    except StamenError as exc:
        return type(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), min_size=1, max_size=3),
    cut=st.integers(-2, 2),
    signed=st.booleans(),
    verify=st.booleans(),
)
def test_a_corrupted_envelope_is_never_read_otherwise(
    flips: list[tuple[int, int]], cut: int, signed: bool, verify: bool, signer: Signer
) -> None:
    """Bit flips and truncations anywhere: None, or exactly what the strict path reads; a
    SignatureError only where the strict path raises one."""
    verifier = Verifier([signer.public_key_bytes()]) if verify else None
    data = bytearray(pack(_envelope(), signer if signed else None))
    for at, xor in flips:
        data[at % len(data)] ^= xor
    blob = bytes(data[: len(data) + cut] if cut < 0 else data + bytes(cut))
    strict = _strict(blob, verifier)
    try:
        fast = unpack_expected(blob, "dense", BASE, 7, "client-3", TABLE, verifier)
    except SignatureError:
        assert strict is SignatureError
        return
    if fast is not None:
        assert isinstance(strict, Envelope) and _same(fast, strict)


@pytest.mark.parametrize("codec", ["dense", "fp16", "dense+zstd", "topk(ratio=0.5)", "int8"])
def test_decode_expected_is_decode_update(codec: str) -> None:
    rng = np.random.default_rng(0)
    delta = {"fc1.weight": rng.standard_normal((4, 3)).astype(np.float32), "fc1.bias": np.ones(4, np.float32)}
    table = tensor_table(delta)
    data = encode_update(
        delta, CodecSpec.parse(codec), base_hash=BASE, version=2, sender="c-1", rng=np.random.default_rng(1)
    )
    _, want = decode_update(data, expected_base=BASE, expected_tensors=table)
    got = decode_expected(
        data, codec=codec, version=2, sender="c-1", expected_base=BASE, expected_tensors=table
    )
    assert got is not None
    assert list(got[1]) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[1][name], want[name])
        assert got[1][name].flags.writeable
    other = "fp16" if codec != "fp16" else "dense"
    for wrong in (other, "nope("):
        expect = {"version": 2, "sender": "c-1", "expected_base": BASE, "expected_tensors": table}
        assert decode_expected(data, codec=wrong, **expect) is None  # type: ignore[arg-type]
