"""Codec trio for ``topk``: hand-computed selection, k-largest property, pinned digest; plus
strict decoding of hostile index/value/shape arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import container_of, float_deltas, pinned_input, pipeline, roundtrip, sha

from stamen.protocols import MalformedUpdate, TensorInfo
from stamen.protocols.codecs.topk import index_dtype, kept_count
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
    assert int((out["t"] != 0).sum()) == 3


def test_pinned_payload() -> None:
    payload, out = roundtrip("topk(ratio=0.1)", pinned_input())
    assert out["layer.weight"].reshape(-1)[:2].tolist() == [np.float32(-11.5 / 7), np.float32(-10.5 / 7)]
    assert np.count_nonzero(out["layer.weight"]) == 3 and np.count_nonzero(out["layer.bias"]) == 1
    assert len(payload) == 1 + (7 + 6 + 7 + 12 + 7 + 8) + (7 + 2 + 7 + 4 + 7 + 4)
    assert sha(payload) == "748d14a0165cb3edb2d3ad89fcf0061caf49b302b4dc28aac809cd2a773814d2"


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
        ),  # same size, other shape: reshaped
    ],
)
def test_hostile_wire_arrays(arrays: dict[str, np.ndarray], match: str | None) -> None:
    p = pipeline("topk(ratio=0.1)")
    if match is None:
        assert p.decode(pack_arrays(arrays), _TABLE)["x"][3] == 1.0
        return
    with pytest.raises(MalformedUpdate, match=match):
        p.decode(pack_arrays(arrays), _TABLE)


def test_unsorted_indices_rejected() -> None:
    p = pipeline("topk(ratio=0.2)")
    arrays = {
        "0.i": np.array([5, 2], np.uint16),
        "0.v": np.ones(2, np.float32),
        "0.s": np.array([10], np.uint32),
    }
    with pytest.raises(MalformedUpdate, match="strictly"):
        p.decode(pack_arrays(arrays), _TABLE)
