"""Codec trio for ``topk``: hand-computed selection, k-largest property, pinned layout and values;
machine-independent tie-breaking; plus strict decoding of hostile index/value/shape arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from proto_helpers import (
    container_of,
    decode_by_stages,
    float_deltas,
    layout,
    pinned_input,
    pipeline,
    refused,
    roundtrip,
)

from stamen.protocols import MalformedUpdate, TensorInfo
from stamen.protocols.codecs.topk import index_dtype, kept_count, largest_indices
from stamen.protocols.container import pack_arrays


def test_tiny_by_hand() -> None:
    x = np.array([0.1, -3.0, 2.0, 0.5, -0.2], np.float32)
    wire = container_of("topk(ratio=0.4)", {"x": x})
    assert list(wire) == ["0.i", "0.v", "0.s"]
    assert wire["0.i"].dtype == np.uint16 and wire["0.i"].tolist() == [1, 2]
    assert wire["0.v"].dtype == np.float32 and wire["0.v"].tolist() == [-3.0, 2.0]
    assert wire["0.s"].dtype == np.uint32 and wire["0.s"].tolist() == [5]
    payload, out = roundtrip("topk(ratio=0.4)", {"x": x})
    assert out["x"].tolist() == [0.0, -3.0, 2.0, 0.0, 0.0]
    assert len(payload) == 1 + (7 + 4) + (7 + 8) + (7 + 4)


def test_kept_count_and_index_dtype() -> None:
    assert [kept_count(0.01, n) for n in (0, 1, 100, 101, 1000)] == [0, 1, 1, 2, 10]
    assert kept_count(1.0, 7) == 7 and kept_count(1e-9, 7) == 1
    assert index_dtype(2**16) == np.uint16 and index_dtype(2**16 + 1) == np.uint32
    assert index_dtype(2**32) == np.uint32 and index_dtype(2**32 + 1) == np.uint64
    wire = container_of("topk(ratio=1e-06)", {"x": np.zeros(2**16 + 1, np.float32)})
    assert wire["0.i"].dtype == np.uint32


@settings(max_examples=80, deadline=None)
@given(float_deltas(), st.floats(1e-3, 1.0))
def test_keeps_exactly_the_k_largest_property(delta: dict[str, np.ndarray], ratio: float) -> None:
    text = f"topk(ratio={ratio!r})"
    wire = container_of(text, delta)
    payload, out = roundtrip(text, delta)
    overhead = 1
    for i, (name, x) in enumerate(delta.items()):
        flat, n = x.reshape(-1), x.size
        idx = wire[f"{i}.i"].astype(np.int64)
        k = kept_count(ratio, n)
        assert idx.shape == (k,) and np.all(np.diff(idx) > 0)
        mask = np.zeros(n, bool)
        mask[idx] = True
        if 0 < k < n:
            assert np.abs(flat[mask]).min() >= np.abs(flat[~mask]).max()
        np.testing.assert_array_equal(out[name].reshape(-1), np.where(mask, flat, 0))
        assert out[name].shape == x.shape
        overhead += 3 * (4 + len(str(i)) + 5) + 4 * x.ndim + 10
        assert len(payload) <= sum(
            kept_count(ratio, a.size) * (index_dtype(a.size).itemsize + 4) for a in delta.values()
        ) + overhead + 100 * len(delta)


def test_ratio_one_is_lossless_and_ties_are_deterministic() -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    _, out = roundtrip("topk(ratio=1.0)", {"x": x})
    np.testing.assert_array_equal(out["x"], x)
    ties = {"t": np.ones(300, np.float32)}
    first, out = roundtrip("topk(ratio=0.01)", ties, seed=1)
    assert first == roundtrip("topk(ratio=0.01)", ties, seed=2)[0]
    assert np.flatnonzero(out["t"]).tolist() == [0, 1, 2]  # ties to the lowest indices, on any CPU


def test_largest_indices_by_hand() -> None:
    x = np.array([1, np.nan, 3, 3, np.nan, 2, 3], np.float32)  # NaN ranks above every number
    got = [largest_indices(x, k).tolist() for k in range(8)]
    assert got == [
        [],
        [1],
        [1, 4],
        [1, 2, 4],
        [1, 2, 3, 4],
        [1, 2, 3, 4, 6],
        [1, 2, 3, 4, 5, 6],
        list(range(7)),
    ]
    assert largest_indices(x, 3).dtype == np.int64


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        np.float32, st.integers(0, 60), elements=st.sampled_from([0.0, 1.0, 2.0, -1.0, np.nan, np.inf])
    ),
    st.integers(0, 60),
)
def test_largest_indices_equals_a_stable_sort(x: np.ndarray, k: int) -> None:
    k = min(k, x.size)
    order = sorted(range(x.size), key=lambda i: (not np.isnan(x[i]), -float(np.nan_to_num(x[i])), i))
    assert largest_indices(x, k).tolist() == sorted(order[:k])


def test_pinned_payload() -> None:
    # |layer.weight| ties in pairs: top-3 of 11.5, 11.5, 10.5, 10.5 (/ 7) keeps the lower index of
    # the tied 10.5s; |layer.bias| = 1, .5, 0, .5, 1 keeps index 0. Layout, indices and values are
    # pinned (not the payload's digest): the same on every CPU, whatever SIMD kernel it selects.
    payload, out = roundtrip("topk(ratio=0.1)", pinned_input())
    assert layout(payload) == [
        ("0.i", "uint16", (3,)),
        ("0.v", "float32", (3,)),
        ("0.s", "uint32", (2,)),
        ("1.i", "uint16", (1,)),
        ("1.v", "float32", (1,)),
        ("1.s", "uint32", (1,)),
    ]
    assert len(payload) == 1 + (7 + 6 + 7 + 12 + 7 + 8) + (7 + 2 + 7 + 4 + 7 + 4)
    wire = container_of("topk(ratio=0.1)", pinned_input())
    assert wire["0.i"].tolist() == [0, 1, 23] and wire["1.i"].tolist() == [0]
    assert wire["0.s"].tolist() == [4, 6] and wire["1.s"].tolist() == [5]
    np.testing.assert_allclose(wire["0.v"], [-11.5 / 7, -10.5 / 7, 11.5 / 7], rtol=1e-6)
    np.testing.assert_allclose(wire["1.v"], [-1.0], rtol=1e-6)
    weight = np.zeros(24)
    weight[[0, 1, 23]] = [-11.5 / 7, -10.5 / 7, 11.5 / 7]
    np.testing.assert_allclose(out["layer.weight"].reshape(-1), weight, rtol=1e-6)
    np.testing.assert_allclose(out["layer.bias"], [-1.0, 0, 0, 0, 0], rtol=1e-6)


_TABLE = [TensorInfo("x", (10,), "float32")]


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {
                "0.i": np.array([3], np.uint16),
                "0.v": np.ones(1, np.float32),
                "0.s": np.array([10], np.uint32),
            },
            None,
        ),  # valid control
        (
            {
                "0.i": np.array([3], np.uint32),
                "0.v": np.ones(1, np.float32),
                "0.s": np.array([10], np.uint32),
            },
            "indices",
        ),
        (
            {
                "0.i": np.array([3, 4], np.uint16),
                "0.v": np.ones(2, np.float32),
                "0.s": np.array([10], np.uint32),
            },
            "indices",
        ),
        (
            {
                "0.i": np.array([10], np.uint16),
                "0.v": np.ones(1, np.float32),
                "0.s": np.array([10], np.uint32),
            },
            "strictly",
        ),
        (
            {"0.i": np.array([3], np.uint16), "0.v": np.ones(1, np.int32), "0.s": np.array([10], np.uint32)},
            "float",
        ),
        (
            {"0.i": np.array([3], np.uint16), "0.v": np.ones(1, np.float32), "0.s": np.array([10], np.int32)},
            "shape",
        ),
        (
            {
                "0.i": np.array([0], np.uint16),
                "0.v": np.ones(1, np.float32),
                "0.s": np.array([2**31, 2**31], np.uint32),
            },
            "limit",
        ),
        ({"0.i": np.array([3], np.uint16), "0.v": np.ones(1, np.float32)}, "table"),
        (
            {
                "0.i": np.array([3], np.uint16),
                "0.v": np.ones(1, np.float32),
                "0.s": np.array([5, 2], np.uint32),
            },
            None,
        ),  # same size, other shape: the stage reshapes it (the pipeline refuses, see below)
    ],
)
def test_hostile_wire_arrays(arrays: dict[str, np.ndarray], match: str | None) -> None:
    if match is None:
        assert decode_by_stages("topk(ratio=0.1)", pack_arrays(arrays), _TABLE)["x"][3] == 1.0
        return
    refused("topk(ratio=0.1)", pack_arrays(arrays), _TABLE, match)


def test_pipeline_wants_exactly_the_layout_the_table_implies() -> None:
    arrays = {
        "0.i": np.array([3], np.uint16),
        "0.v": np.ones(1, np.float32),
        "0.s": np.array([10], np.uint32),
    }
    assert pipeline("topk(ratio=0.1)").decode(pack_arrays(arrays), _TABLE)["x"][3] == 1.0
    arrays["0.s"] = np.array([5, 2], np.uint32)  # same tensor size, but not what an encoder of (10,) sends
    with pytest.raises(
        MalformedUpdate, match="container of 36 bytes; the codec and tensor table imply exactly 32"
    ):
        pipeline("topk(ratio=0.1)").decode(pack_arrays(arrays), _TABLE)
    arrays["0.s"], arrays["0.i"] = (
        np.array([10], np.uint32),
        np.array([3], np.int16),
    )  # same bytes, other dtype
    with pytest.raises(MalformedUpdate, match=r"'0\.i' is int16\[1\], the codec implies uint16\[1\]"):
        pipeline("topk(ratio=0.1)").decode(pack_arrays(arrays), _TABLE)


def test_unsorted_indices_rejected() -> None:
    p = pipeline("topk(ratio=0.2)")
    arrays = {
        "0.i": np.array([5, 2], np.uint16),
        "0.v": np.ones(2, np.float32),
        "0.s": np.array([10], np.uint32),
    }
    with pytest.raises(MalformedUpdate, match="strictly"):
        p.decode(pack_arrays(arrays), _TABLE)
