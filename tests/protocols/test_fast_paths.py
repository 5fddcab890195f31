"""The envelope path's memos and shortcuts against the plain paths they replace (issue #15).

``pack`` validates the header it built without the JSON round trip when every type survives JSON,
and remembers a tensor table's JSON by identity; the decoder reads a container of exactly known
layout by comparing its non-data bytes; tensor tables, codec pipelines and decode plans are
memoized; dense and fp16 pipelines get no freshly seeded generator. Each is checked here against
an independent spelling of the old path: same bytes, same arrays, same errors.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.protocols import (
    CodecError,
    CodecSpec,
    Envelope,
    MalformedUpdate,
    Signer,
    StageSpec,
    TensorInfo,
    _header,
    codec_pipeline,
    pack,
    tensor_table,
    unpack,
)
from stamen.protocols.codecs.base import _REGISTRY, ArrayStage
from stamen.protocols.container import pack_arrays, read_exact, skeleton, unpack_arrays
from stamen.protocols.envelope import _FIXED, MAGIC
from stamen.protocols.signing import KEY_ID_LENGTH

TABLE = (TensorInfo("fc1.weight", (64, 40), "float32"), TensorInfo("fc1.bias", (64,), "float32"))


def _old_header(env: Envelope, digest: str | None) -> bytes:
    """The header as pack wrote it before the fast path: build, json.dumps, json.loads, validate."""
    fields = {
        "schema": env.schema,
        "codec": env.codec,
        "base": env.base_hash,
        "ver": env.version,
        "snd": env.sender,
        "tensors": env.tensors,
        "meta": dict(env.meta),
        "len": len(env.payload),
        "sha": digest,
    }
    try:
        raw = json.dumps(
            _header.build(fields), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise MalformedUpdate(f"envelope field cannot be serialized: {exc}") from None
    _header.validate(_header.loads(raw), signed=digest is not None)
    return raw


def _old_pack(env: Envelope, signer: Signer | None = None) -> bytes:
    """pack's framing around :func:`_old_header` (Ed25519 signatures are deterministic)."""
    import hashlib

    digest = hashlib.sha256(env.payload).hexdigest() if signer is not None else None
    header = _old_header(env, digest)
    prefix = struct.pack("<4sBI", MAGIC, 1 if signer else 0, len(header)) + header
    if signer is None:
        return prefix + bytes(env.payload)
    prefix += signer.key_id.encode("ascii").ljust(KEY_ID_LENGTH, b"\x00")
    return prefix + signer.sign(prefix) + bytes(env.payload)


def _outcome(fn: object, *args: object) -> object:
    """The bytes ``fn`` returns, or ``(type, message)`` of what it raises."""
    try:
        return fn(*args)  # type: ignore[operator]
    except (MalformedUpdate, CodecError) as exc:
        return type(exc), str(exc)


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(), st.none()
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=st.lists(
        st.tuples(
            names, st.lists(st.integers(0, 2**33), max_size=3), st.sampled_from(["float32", "int8", "x"])
        ),
        max_size=4,
    ),
    meta=st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3)), scalars, max_size=3),
    version=st.one_of(st.integers(-1, 2**64), st.booleans()),
    sender=st.text(max_size=130),
    base=st.sampled_from(["ab" * 32, "AB", "", "0" * 130]),
    signed=st.booleans(),
)
def test_pack_writes_and_refuses_what_the_round_trip_path_did(
    table: list[tuple[str, list[int], str]],
    meta: dict[object, object],
    version: int,
    sender: str,
    base: str,
    signed: bool,
    signer: Signer,
) -> None:
    """Valid or not, exact JSON types or not: same bytes, or the same error, twice (memo hit)."""
    tensors = tuple(TensorInfo(n, tuple(d), t) for n, d, t in table)
    env = Envelope("dense", base, version, sender, tensors, b"\x01\x02", meta)  # type: ignore[arg-type]
    key = signer if signed else None
    want = _outcome(_old_pack, env, key)
    assert _outcome(pack, env, key) == want
    assert _outcome(pack, env, key) == want  # the table's JSON is now remembered (when valid)


def test_pack_of_odd_types_takes_the_round_trip() -> None:
    """Types JSON changes (an int meta key, a tuple, an int subclass) give the old bytes or error."""
    table = (TensorInfo("w", (2, 3), "float32"),)
    for meta in ({1: 2}, {"t": (1, 2)}, {"b": True}, {"f": 1e300}):
        env = Envelope("dense", "ab" * 32, 3, "c", table, b"", meta)  # type: ignore[arg-type]
        assert _outcome(pack, env) == _outcome(_old_pack, env)
    odd = (TensorInfo("w", (True, 3), "float32"),)  # (True, 3) == (1, 3): must not hit a (1, 3) memo
    pack(Envelope("dense", "ab" * 32, 3, "c", (TensorInfo("w", (1, 3), "float32"),), b""))
    with pytest.raises(MalformedUpdate, match="dims"):
        pack(Envelope("dense", "ab" * 32, 3, "c", odd, b""))


def test_unhashable_dtype_in_a_received_header_is_malformed() -> None:
    """A list or object as a tensor's dtype is a MalformedUpdate (it used to leak a TypeError)."""
    for dtype in (["float32"], {"a": 1}):
        header = json.dumps({"tensors": [["w", [1], dtype]]}).encode()
        with pytest.raises(MalformedUpdate, match="dtype"):
            _header.tensors_from(json.loads(header)["tensors"])


def test_tensor_table_memo_matches_the_plain_description() -> None:
    """Equal to the field-by-field description, the same object for the same layout, and a new
    one for any change of shape, dtype (byte order included) or name."""
    w = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float16)}
    ref = tuple(TensorInfo(k, tuple(int(d) for d in v.shape), v.dtype.name) for k, v in w.items())
    assert tensor_table(w) == ref and tensor_table(dict(w)) is tensor_table(w)
    big = {"a": w["a"].astype(">f4"), "b": w["b"]}
    assert tensor_table(big) == ref  # big-endian float32 is named float32 too
    assert tensor_table({"a": np.zeros((3, 2), np.float32), "b": w["b"]})[0].shape == (3, 2)
    assert tensor_table({"a": np.zeros((2, 3), np.float64), "b": w["b"]})[0].dtype == "float64"
    assert tensor_table({"a": [[1.0, 2.0]]}) == (TensorInfo("a", (1, 2), "float64"),)
    assert tensor_table({1: np.zeros(1)})[0].name == 1 and tensor_table({True: np.zeros(1)})[0].name is True  # type: ignore[dict-item]


def test_codec_pipeline_cache_tells_apart_equal_but_different_params() -> None:
    """``level=True == level=1``, but only the int is a valid zstd level, cached or not."""
    good = CodecSpec((StageSpec("dense"), StageSpec("zstd", (("level", 1),))))
    bad = CodecSpec((StageSpec("dense"), StageSpec("zstd", (("level", True),))))
    assert codec_pipeline(good).spec.to_string() == "dense+zstd(level=1)"
    with pytest.raises(CodecError, match="level"):
        codec_pipeline(bad)
    assert codec_pipeline(codec_pipeline(good).spec) is codec_pipeline(good)
    assert codec_pipeline("dense+zstd(level=1)").spec == codec_pipeline(good).spec


@pytest.mark.parametrize(
    "name", sorted(n for n, c in _REGISTRY.items() if getattr(c, "uses_rng", True) is False)
)
def test_stages_that_say_they_draw_nothing_draw_nothing(name: str) -> None:
    """A stage with ``uses_rng = False`` leaves its generator untouched and gives the same
    output with any generator (what lets encode_delta skip seeding one)."""
    stage = _REGISTRY[name]()
    assert isinstance(stage, ArrayStage)
    arrays = {"0": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), "1": np.float64([0.5, -2])}
    rng = np.random.default_rng(7)
    before = rng.bit_generator.state
    out = stage.encode(dict(arrays), rng)
    assert rng.bit_generator.state == before
    other = stage.encode(dict(arrays), np.random.default_rng(8))
    assert pack_arrays(out) == pack_arrays(other)


def test_dense_and_fp16_encode_delta_bytes_do_not_depend_on_the_skipped_seed() -> None:
    """encode_delta (no generator seeded) against encode_update with the seeded one."""
    from stamen.client.core import encode_delta
    from stamen.protocols import encode_update

    delta = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    for codec in ("dense", "fp16", "dense+zstd"):
        got = encode_delta(delta, codec, base_hash="ab" * 32, version=2, sender="c", seed=99)
        spec = CodecSpec.parse(codec)
        want = encode_update(
            delta, spec, base_hash="ab" * 32, version=2, sender="c", rng=np.random.default_rng(99)
        )
        assert got == want


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 255)), max_size=3), cut=st.integers(-3, 3))
def test_read_exact_is_unpack_arrays_or_defers_to_it(flips: list[tuple[int, int]], cut: int) -> None:
    """On any corruption of a container's first bytes (or a wrong length), the exact reader
    either returns what the strict reader returns, or None (the strict reader then decides)."""
    arrays = {
        "0": np.arange(6, dtype=np.float32).reshape(2, 3),
        "1": np.float32([1.5]),
        "2": np.zeros(0, np.float32),
    }
    frame = skeleton({k: _wire(a) for k, a in arrays.items()})
    assert frame is not None
    data = bytearray(pack_arrays(arrays))
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    blob = bytes(data[: len(data) + cut] if cut < 0 else data + bytes(cut))
    fast = read_exact(blob, frame)
    if fast is None:
        return
    slow = unpack_arrays(blob)
    assert list(fast) == list(slow)
    for key, arr in fast.items():
        assert arr.dtype == slow[key].dtype and arr.shape == slow[key].shape
        np.testing.assert_array_equal(arr, slow[key])


def _wire(arr: np.ndarray) -> object:
    from stamen.protocols.container import WireArray

    return WireArray(arr.dtype, arr.shape)


def test_decode_plan_is_per_table_object_and_content() -> None:
    """A list table, a tuple table and an equal new tuple decode alike; a different table refuses."""
    pipeline = codec_pipeline("dense")
    delta = {"fc1.weight": np.ones((64, 40), np.float32), "fc1.bias": np.arange(64, dtype=np.float32)}
    payload = pipeline.encode(delta, np.random.default_rng(0))
    for table in (TABLE, list(TABLE), tuple(list(TABLE)), TABLE):
        out = pipeline.decode(payload, table)
        np.testing.assert_array_equal(out["fc1.bias"], delta["fc1.bias"])
        assert out["fc1.weight"].flags.writeable
    with pytest.raises(MalformedUpdate):
        pipeline.decode(payload, (TensorInfo("fc1.weight", (64, 40), "float32"),))
    env = unpack(pack(Envelope("dense", "ab" * 32, 0, "c", TABLE, payload)))
    assert env.tensors == TABLE and bytes(env.payload) == payload
    assert len(pack(env)) == _FIXED.size + len(_old_header(env, None)) + len(payload)


def test_pack_arrays_of_strided_and_big_endian_arrays_is_their_contiguous_little_endian_bytes() -> None:
    """A little-endian array is written with ``tobytes`` whatever its strides; others converted."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    for arr in (base.T, base[:, ::2], base.astype(">f4").T, np.float32(2.5), base[1]):
        want = np.ascontiguousarray(arr, dtype=np.asarray(arr).dtype.newbyteorder("<")).tobytes()
        assert pack_arrays({"x": arr}).endswith(want)
        np.testing.assert_array_equal(unpack_arrays(pack_arrays({"x": arr}))["x"], arr)
