"""Codec trio for ``fedzip``: a hand-encoded blob, round trip to exactly the quantized sparse update
(with slow reference k-means) within the analytic size bound, pinned payloads; plus hostile blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import container_of, float_deltas, layout, pinned_input, pipeline, refused, roundtrip

from stamen.protocols import CodecError, MalformedUpdate, TensorInfo
from stamen.protocols.codecs.bitpack import ByteWriter, width_for
from stamen.protocols.codecs.fedzip import kmeans_1d, top_z
from stamen.protocols.codecs.topk import kept_count
from stamen.protocols.container import pack_arrays

X = np.array([0.0, 5.0, -0.1, 4.0, 0.2, -3.0, 0.0, 1.0], np.float32)


def test_tiny_by_hand() -> None:
    # top-4 |x|: 5, 4, -3, 1 at 1, 3, 5, 7. k-means from linspace(-3, 5, 3) = [-3, 1, 5]:
    # {-3}, {1}, {4, 5} -> centroids [-3, 1, 4.5]; counts [1, 1, 2] -> Huffman lengths [2, 2, 1],
    # canonical codes 10, 11, 0; ids [2, 2, 0, 1] -> 0 0 10 11. Gaps [1, 1, 1, 1] at width 1
    # (4 bits) beat 12 absolute bits and 8 Rice bits: header 0x41, stream 1111 001011 (+ 6 pad).
    wire = container_of("fedzip(density=0.5)", {"x": X})
    expected = bytes([8, 0x41]) + np.array([-3, 1, 4.5], "<f4").tobytes() + bytes([0x22, 0x10, 0xF2, 0xC0])
    assert list(wire) == ["0.fz"] and wire["0.fz"].tobytes() == expected
    payload, out = roundtrip("fedzip(density=0.5)", {"x": X})
    assert out["x"].tolist() == [0, 4.5, 0, 4.5, 0, -3, 0, 1]
    assert len(payload) == 1 + (1 + 4 + 1 + 1 + 1) + 18


def _nearest(v: float, cent: list[float]) -> int:
    """Index of the nearest centroid, ties to the lower index."""
    return min(range(len(cent)), key=lambda j: (abs(v - cent[j]), j))


def _slow_kmeans(values: list[float], k: int) -> tuple[list[float], list[int]]:
    """Literal Lloyd iterations in plain Python (the reference for ``kmeans_1d``)."""
    lo, hi = min(values), max(values)
    cent = [float(c) for c in np.linspace(lo, hi, k)]
    ids: list[int] = []
    for _ in range(4):
        ids = [_nearest(v, cent) for v in values]
        for j in range(k):
            members = [v for v, i in zip(values, ids, strict=True) if i == j]
            if members:
                total = 0.0
                for v in members:
                    total += v
                cent[j] = total / len(members)
    return cent, ids


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=60), st.integers(1, 16))
def test_kmeans_matches_the_slow_reference(values: list[float], k: int) -> None:
    centroids, ids = kmeans_1d(np.array(values, np.float32), k)
    cent, ref_ids = _slow_kmeans([float(v) for v in np.array(values, np.float32)], k)
    assert ids.tolist() == ref_ids
    np.testing.assert_array_equal(centroids, np.array(cent, np.float32))


def _quantized(x: np.ndarray, density: float, clusters: int) -> np.ndarray:
    flat = x.reshape(-1)
    idx = top_z(flat, kept_count(density, flat.size))
    centroids, ids = kmeans_1d(flat[idx], clusters)
    out = np.zeros(flat.size, np.float32)
    out[idx] = centroids[ids]
    return out.reshape(x.shape)


@settings(max_examples=80, deadline=None)
@given(
    float_deltas(max_abs=1e6),
    st.floats(1e-3, 1.0),
    st.integers(1, 16),
    st.sampled_from(["auto", "absolute", "gaps", "entropy"]),
)
def test_roundtrip_is_the_quantized_sparse_update_within_the_size_bound(
    delta: dict[str, np.ndarray], density: float, clusters: int, position: str
) -> None:
    text = f"fedzip(density={density!r},clusters={clusters},position={position})"
    payload, out = roundtrip(text, delta)
    bound = 1
    for i, (name, x) in enumerate(delta.items()):
        flat = x.reshape(-1)
        k = kept_count(density, flat.size)
        idx = top_z(flat, k)
        assert idx.size == k and np.all(np.diff(idx) > 0)
        if 0 < k < flat.size:
            assert np.abs(flat[idx]).min() >= np.delete(np.abs(flat), idx).max()
        np.testing.assert_array_equal(out[name], _quantized(x, density, clusters))
        assert len(np.unique(out[name][out[name] != 0])) <= clusters
        # blob: n, header, centroids, nibbles, positions <= k ceil(log2 n) bits, ids <= k (K-1) bits
        stream = k * (width_for(flat.size - 1) + max(1, clusters - 1))
        blob = 3 + 1 + 4 * clusters + math.ceil(clusters / 2) + math.ceil(stream / 8)
        bound += 4 + len(str(i)) + 3 + blob + 1
    assert len(payload) <= bound


def test_three_position_encodings_decode_alike_and_auto_is_smallest() -> None:
    x = {"w": np.random.default_rng(3).standard_normal(5000).astype(np.float32)}
    sizes = {}
    for mode in ("absolute", "gaps", "entropy", "auto"):
        payload, out = roundtrip(f"fedzip(position={mode})", x)
        np.testing.assert_array_equal(out["w"], _quantized(x["w"], 0.2, 3))
        sizes[mode] = len(payload)
    assert sizes["auto"] == min(sizes.values()) == sizes["entropy"] < sizes["gaps"] < sizes["absolute"]


def test_pinned_payloads_and_determinism() -> None:
    # top-5 of layer.weight: |x| = 11.5, 11.5, 10.5, 10.5, 9.5 (/ 7) at 0, 23, 1, 22 and the lower
    # of the tied 9.5s, 2; k-means from [-11.5, 0, 11.5] / 7 leaves {-11.5, -10.5, -9.5} -> -1.5,
    # an empty middle and {10.5, 11.5} -> 11 / 7. layer.bias keeps -1 (index 0 of the tied ends).
    payload, out = roundtrip("fedzip", pinned_input())
    assert len(payload) == 1 + (8 + 16 + 3) + (8 + 16 + 1)  # container + blob head + stream
    assert layout(payload) == [("0.fz", "uint8", (19,)), ("1.fz", "uint8", (17,))]
    weight = np.zeros(24)
    weight[[0, 1, 2, 22, 23]] = [-1.5, -1.5, -1.5, 11 / 7, 11 / 7]
    np.testing.assert_allclose(out["layer.weight"].reshape(-1), weight, rtol=1e-6)
    np.testing.assert_allclose(out["layer.bias"], [-1.0, 0, 0, 0, 0], rtol=1e-6)
    assert payload == roundtrip("fedzip", pinned_input(), seed=9)[0]  # no randomness
    big = {"w": np.random.default_rng(0).standard_normal(20_000).astype(np.float32)}
    payload, out = roundtrip("fedzip(density=0.01)", big)
    assert len(payload) == 257 and layout(payload) == [("0.fz", "uint8", (247,))]
    assert np.count_nonzero(out["w"]) == 200  # 1 %, in two clusters (the middle one stays empty)
    np.testing.assert_allclose(np.unique(out["w"]), [-2.9036081, 0.0, 2.8947597], rtol=1e-6)
    np.testing.assert_allclose(float(np.abs(out["w"]).sum()), 579.98718, rtol=1e-6)


def test_empty_tensor_non_finite_input_and_params() -> None:
    _, out = roundtrip("fedzip", {"e": np.zeros((0, 3), np.float32), "x": X})
    assert out["e"].shape == (0, 3)
    with pytest.raises(CodecError, match="non-finite"):
        pipeline("fedzip").encode({"x": np.array([1.0, np.nan], np.float32)}, np.random.default_rng(0))
    for bad in ("fedzip(density=0.0)", "fedzip(clusters=17)", "fedzip(clusters=0)", "fedzip(position=huff)"):
        with pytest.raises(CodecError):
            pipeline(bad)
    _, out = roundtrip("fedzip(density=1.0,clusters=1)", {"x": X})
    assert np.allclose(out["x"], X.mean())  # one cluster: every entry becomes the mean


_TABLE = [TensorInfo("x", (8,), "float32")]
_GOOD = container_of("fedzip(density=0.5)", {"x": X})["0.fz"].tobytes()


def _blob(data: bytes) -> bytes:
    return pack_arrays({"0.fz": np.frombuffer(data, np.uint8)})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_GOOD, None),  # valid control
        (_GOOD[:-1], "stream"),
        (_GOOD + b"\x00", "needs"),
        (_GOOD[:-1] + b"\xc1", "padding"),
        (_GOOD[:1] + b"\xc1" + _GOOD[2:], "header"),  # position mode 3
        (_GOOD[:1] + b"\x43" + _GOOD[2:], "beyond"),  # gap width 3 reads gaps past n
        (_GOOD[:14] + b"\x11\x10" + _GOOD[16:], "Kraft"),  # lengths 1, 1, 1
        (_GOOD[:14] + b"\x00\x00" + _GOOD[16:], "no symbols"),
        (_GOOD[:14] + b"\x22\x11" + _GOOD[16:], "padding nibble"),
        (_GOOD[:2] + np.array([np.inf], "<f4").tobytes() + _GOOD[6:], "non-finite"),
        (bytes([9]) + _GOOD[1:], "limit"),  # 9 elements > the table's 8
        (ByteWriter().varint(2**40).array().tobytes(), "limit"),
        (b"\x00\x00", "trailing"),
        (b"", "truncated"),
    ],
)
def test_hostile_blobs(data: bytes, match: str | None) -> None:
    if match is None:
        assert pipeline("fedzip(density=0.5)").decode(_blob(data), _TABLE)["x"].tolist() == [
            0,
            4.5,
            0,
            4.5,
            0,
            -3,
            0,
            1,
        ]
        return
    refused("fedzip(density=0.5)", _blob(data), _TABLE, match)


def test_wrong_dtype_blob_is_rejected() -> None:
    with pytest.raises(MalformedUpdate, match="uint8"):
        pipeline("fedzip").decode(pack_arrays({"0.fz": np.zeros(3, np.int8)}), _TABLE)
