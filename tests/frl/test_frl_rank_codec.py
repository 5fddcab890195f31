"""Codec trio for ``frl_rank``: hand-packed bits, round-trip/size property, pinned payload bytes; plus
O(1) zero tensors and strict decoding of hostile payloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import CodecError, CodecPipeline, CodecSpec, StamenError, tensor_table
from stamen.protocols.codecs.frl_rank import FRLRank, index_bits, pack_indices, unpack_indices
from stamen.protocols.container import pack_arrays, unpack_arrays

SPEC = CodecSpec.parse("frl_rank")


def _pipe() -> CodecPipeline:
    return CodecPipeline(SPEC)


def _roundtrip(delta: dict[str, np.ndarray]) -> tuple[bytes, dict[str, np.ndarray]]:
    payload = _pipe().encode(delta, np.random.default_rng(0))
    return payload, _pipe().decode(payload, tensor_table(delta))


def test_bits_per_index() -> None:
    assert [index_bits(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 5120, 2**24)] == [0, 0, 1, 2, 2, 3, 3, 4, 13, 24]


def test_pack_by_hand() -> None:
    # ranking [4, 0, 3, 1, 2] of n = 5 at 3 bits, each index LSB first:
    # stream 0,0,1 | 0,0,0 | 1,1,0 | 1,0,0 | 0,1,0 (+ one 0 pad)
    # byte 0 = bits 0..7 = 0,0,1,0,0,0,1,1 -> 4 + 64 + 128 = 196
    # byte 1 = bits 8..15 = 0,1,0,0,0,1,0,0 -> 2 + 32 = 34
    packed = pack_indices(np.array([4, 0, 3, 1, 2]), 3)
    assert packed.tolist() == [196, 34]
    assert unpack_indices(packed, 5, 3).tolist() == [4, 0, 3, 1, 2]
    ranking = {"s": np.array([4, 0, 3, 1, 2], np.float32)}
    wire = unpack_arrays(_pipe().encode(ranking, np.random.default_rng(0)))
    assert list(wire) == ["0.p", "0.s"] and wire["0.p"].tolist() == [196, 34] and wire["0.s"].tolist() == [5]


def test_zero_tensors_cost_constant_bytes() -> None:
    small, _ = _roundtrip({"w": np.zeros((2, 2), np.float32)})
    big, out = _roundtrip({"w": np.zeros((300, 400), np.float32)})
    assert len(big) - len(small) <= 4  # only the shape varints/values differ
    assert len(big) < 40 and not out["w"].any() and out["w"].shape == (300, 400)


@st.composite
def ranking_deltas(draw: st.DrawFn) -> dict[str, np.ndarray]:
    out = {}
    for i in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
        n = int(np.prod(shape))
        if draw(st.booleans()):
            perm = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(n)
            out[f"t{i}.scores"] = perm.astype(np.float32).reshape(shape)
        else:
            out[f"t{i}.weight"] = np.zeros(shape, np.float32)
    return out


@settings(max_examples=100, deadline=None)
@given(ranking_deltas())
def test_roundtrip_and_size_property(delta: dict[str, np.ndarray]) -> None:
    payload, out = _roundtrip(delta)
    bits = 0
    for k, v in delta.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == np.float32
        if v.any():
            bits += -(-v.size * index_bits(v.size) // 8) * 8
    assert len(payload) <= bits // 8 + 40 * len(delta) + 2


def test_large_ranking_is_much_smaller_than_float32() -> None:
    n = 5120
    perm = np.random.default_rng(1).permutation(n).astype(np.float32)
    payload, out = _roundtrip({"s": perm})
    np.testing.assert_array_equal(out["s"], perm)
    assert len(payload) == pytest.approx(n * 13 / 8, abs=30)
    dense = CodecPipeline(CodecSpec.parse("dense")).encode({"s": perm}, np.random.default_rng(0))
    assert len(payload) / len(dense) == pytest.approx(13 / 32, abs=0.01)


def test_pinned_payload() -> None:
    """Integer-exact input (an all-zero tensor and a permutation): the wire bytes are pinned as they
    are (no float arithmetic precedes them), and the packed ranking is spelled out."""
    delta = {
        "a.weight": np.zeros((3, 4), np.float32),
        "a.scores": np.array([[5, 2, 7], [0, 1, 3], [6, 4, 8]], np.float32),
    }
    payload, out = _roundtrip(delta)
    assert payload == bytes.fromhex(PINNED)
    # the ranking 5 2 7 0 1 3 6 4 8 in 4-bit indices, low nibble first: 0x25 0x07 0x31 0x46 0x08
    assert bytes.fromhex("2507314608") in payload
    np.testing.assert_array_equal(out["a.scores"], delta["a.scores"])


PINNED = (
    "0403302e7003010003302e73070102030000000400000003312e70030105250731460803312e730701020300000003000000"
)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0, 0, 1], np.float32),
        np.array([0, 1, 2.5], np.float32),
        np.array([0, 1, 3], np.float32),
        np.array([1, np.nan, 0], np.float32),
    ],
)
def test_encode_refuses_what_is_not_a_ranking(bad: np.ndarray) -> None:
    with pytest.raises(CodecError, match="frl_rank"):
        _pipe().encode({"s": bad}, np.random.default_rng(0))


def _decode(arrays: dict[str, np.ndarray], table_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    from stamen.protocols import TensorInfo

    return _pipe().decode(pack_arrays(arrays), [TensorInfo("s", table_shape, "float32")])


def test_decode_rejects_non_permutation() -> None:
    with pytest.raises(CodecError, match="permutation"):
        _decode({"0.p": pack_indices(np.array([0, 0, 1, 2]), 2), "0.s": np.array([4], np.uint32)}, (4,))
    with pytest.raises(CodecError, match="permutation"):  # index 5 >= n within 3 bits
        _decode({"0.p": pack_indices(np.array([0, 1, 2, 3, 5]), 3), "0.s": np.array([5], np.uint32)}, (5,))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"0.p": np.zeros(3, np.uint8), "0.s": np.array([4], np.uint32)}, "bytes"),
        ({"0.p": np.array([0b11110100], np.uint8), "0.s": np.array([3], np.uint32)}, "padding"),
        ({"0.p": np.zeros(1, np.int8), "0.s": np.array([4], np.uint32)}, "uint8"),
        ({"0.p": np.zeros(1, np.uint8), "0.s": np.array([4], np.int32)}, "shape"),
        ({"0.p": np.zeros(0, np.uint8), "0.s": np.array([2**31, 2**31], np.uint32)}, "limit"),
    ],
)
def test_decode_rejects_hostile_payloads(arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(StamenError):  # the pipeline (its container bound may see it first)
        _decode(arrays, (4,))
    with pytest.raises(StamenError, match=match):  # and the stage's own checks
        FRLRank(max_elements=4).decode(dict(arrays))


def test_too_large_for_float32_indices_is_refused() -> None:
    with pytest.raises(CodecError, match="2\\*\\*24"):
        _pipe().encode({"s": np.arange(2**24 + 1, dtype=np.float32)}, np.random.default_rng(0))
