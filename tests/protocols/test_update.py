"""encode_update / decode_update: the client and server entry points."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from proto_helpers import pinned_input

from stamen.protocols import (
    BaseModelMismatch,
    CodecError,
    CodecMismatch,
    CodecPipeline,
    CodecSpec,
    Envelope,
    MalformedUpdate,
    SignatureError,
    Signer,
    StageSpec,
    StamenError,
    TensorInfo,
    ValidationError,
    Verifier,
    codec_pipeline,
    decode_update,
    encode_update,
    model_hash,
    pack,
    tensor_table,
    unpack,
)

BASE = {k: np.zeros_like(v) for k, v in pinned_input().items()}
HASH = model_hash(BASE)


def _encode(text: str = "topk(ratio=0.5)+int8+zstd", **kw: object) -> bytes:
    args: dict = {"base_hash": HASH, "version": 4, "sender": "c7", "rng": np.random.default_rng(1)}
    args.update(kw)
    return encode_update(pinned_input(), CodecSpec.parse(text), **args)


def test_roundtrip_uses_the_envelopes_own_codec(signer: Signer) -> None:
    data = _encode(signer=signer, meta={"num_examples": 32})
    env, delta = decode_update(
        data,
        verifier=Verifier([signer.public_key_bytes()]),
        expected_base=HASH,
        expected_tensors=tensor_table(BASE),
    )
    assert env.codec == "topk(ratio=0.5)+int8(stochastic=true)+zstd(level=3)"
    assert (env.version, env.sender, env.meta, env.key_id) == (4, "c7", {"num_examples": 32}, signer.key_id)
    assert list(delta) == ["layer.weight", "layer.bias"]
    assert all(a.dtype == np.float32 for a in delta.values())
    x = pinned_input()["layer.weight"]
    nonzero = delta["layer.weight"] != 0
    assert nonzero.sum() == 12
    assert np.abs(delta["layer.weight"][nonzero] - x[nonzero]).max() <= np.abs(x).max() / 127


def test_dense_update_is_exact_and_small() -> None:
    data = _encode("dense")
    env, delta = decode_update(data)
    for name, x in pinned_input().items():
        np.testing.assert_array_equal(delta[name], x)
    assert len(data) - len(env.payload) < 260  # header + framing for a 2-tensor model


def test_base_mismatch_and_table_mismatch() -> None:
    data = _encode()
    with pytest.raises(BaseModelMismatch):
        decode_update(data, expected_base="00" * 32)
    table = tensor_table(BASE)
    for wrong in (
        table[:1],
        table[::-1],
        (table[0], TensorInfo("layer.bias", (6,), "float32")),
        (table[0], TensorInfo("layer.bias", (5,), "float16")),
        (table[0], TensorInfo("layer.b", (5,), "float32")),
    ):
        with pytest.raises(ValidationError):
            decode_update(data, expected_tensors=wrong)


def test_bad_codec_or_payload_in_a_wellformed_envelope() -> None:
    env = unpack(_encode())
    with pytest.raises(CodecError, match="nope"):
        decode_update(pack(dataclasses.replace(env, codec="nope")))
    with pytest.raises(StamenError):
        decode_update(pack(dataclasses.replace(env, codec="dense")))
    with pytest.raises(MalformedUpdate):
        decode_update(pack(dataclasses.replace(env, payload=env.payload[:-3])))


def test_unsigned_update_rejected_when_a_signature_is_required(signer: Signer) -> None:
    with pytest.raises(SignatureError):
        decode_update(_encode(), verifier=Verifier([signer.public_key_bytes()]))


def test_encode_update_argument_errors() -> None:
    with pytest.raises(CodecError):
        encode_update(
            pinned_input(),
            "dense",
            base_hash=HASH,
            version=0,
            sender="c",
            rng=np.random.default_rng(0),
        )
    with pytest.raises(MalformedUpdate, match="ver"):
        _encode(version=-1)
    with pytest.raises(MalformedUpdate, match="base"):
        _encode(base_hash="zz")


def test_codec_spec_string_from_the_server_is_honoured() -> None:
    spec = CodecSpec.from_pipeline(["fp16", "zstd"], {"zstd": {"level": 9}})
    data = encode_update(
        pinned_input(), spec, base_hash=HASH, version=0, sender="c", rng=np.random.default_rng(0)
    )
    env: Envelope = unpack(data)
    assert env.codec == spec.to_string() == "fp16+zstd(level=9)"


@pytest.mark.parametrize(
    "asked",
    [
        "dense",  # another codec
        "fedzip",  # a costlier one
        "topk(ratio=0.25)+int8+zstd",  # the same stages, another param
        "topk(ratio=0.5)+int8(stochastic=false)+zstd",  # another default made explicit
        "topk(ratio=0.5)+int8",  # a stage fewer
    ],
)
def test_an_update_in_another_codec_than_asked_is_refused_undecoded(
    asked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    monkeypatch.setattr(CodecPipeline, "decode", lambda self, *a, **k: decoded.append("called"))
    with pytest.raises(CodecMismatch, match=r"encoded with codec 'topk\(ratio=0.5\)\+int8"):
        decode_update(_encode(), expected_base=HASH, expected_codec=asked)
    with pytest.raises(CodecMismatch):
        decode_update(_encode(), expected_codec=CodecSpec.parse(asked))
    assert decoded == []


def test_the_asked_codec_in_any_spelling_decodes() -> None:
    text = "topk(ratio=0.5)+int8(stochastic=true)+zstd(level=3)"
    for asked in ("topk(ratio=0.5)+int8+zstd", "topk(ratio=0.50),int8,zstd", CodecSpec.parse(text)):
        env, _ = decode_update(_encode(), expected_codec=asked)
        assert env.codec == text
    spelled = pack(dataclasses.replace(unpack(_encode()), codec="topk(ratio=.5),int8,zstd(level=3)"))
    assert decode_update(spelled, expected_codec=text)[0].codec == "topk(ratio=.5),int8,zstd(level=3)"
    with pytest.raises(CodecMismatch, match="'nope'"):
        decode_update(pack(dataclasses.replace(unpack(_encode()), codec="nope")), expected_codec=text)


def test_an_asked_spec_built_without_its_defaults_is_the_codec_it_names() -> None:
    """A hand-built CodecSpec (a param left to its default, an int for a float param) names the codec
    encode_update writes canonically: the receiver that asked for it decodes the reply."""
    for spec in (
        CodecSpec((StageSpec("topk", (("ratio", 0.5),)), StageSpec("int8"), StageSpec("zstd"))),
        CodecSpec((StageSpec("topk", (("ratio", 1),)), StageSpec("int8", (("stochastic", True),)))),
    ):
        data = encode_update(
            pinned_input(), spec, base_hash=HASH, version=4, sender="c7", rng=np.random.default_rng(1)
        )
        env, _ = decode_update(data, expected_codec=spec)
        assert env.codec == codec_pipeline(spec).spec.to_string()
    with pytest.raises(CodecMismatch, match=r"asked for 'topk\(ratio=0.25\)\+int8\(stochastic=true\)"):
        asked = CodecSpec((StageSpec("topk", (("ratio", 0.25),)), StageSpec("int8")))
        decode_update(_encode("topk(ratio=0.5)+int8"), expected_codec=asked)
