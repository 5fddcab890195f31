"""Codec trio for ``compeft``: hand-encoded blobs, ternary/global-top-k properties within the size
bound, pinned payloads; plus the trit packing and hostile blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import container_of, float_deltas, layout, pinned_input, pipeline, refused, roundtrip

from stamen.protocols import CodecError, TensorInfo
from stamen.protocols.codecs.bitpack import width_for
from stamen.protocols.codecs.compeft import pack_trits, unpack_trits
from stamen.protocols.codecs.topk import kept_count
from stamen.protocols.container import pack_arrays

A = np.array([0.5, -2.0, 0.1, 3.0], np.float32)
B = np.array([-1.0, 0.2], np.float32)


def test_tiny_by_hand() -> None:
    # global top-3 of |tau| = 3, 2, 1: a[3], a[1], b[0]; sigma = sample std of all six entries
    sigma = math.sqrt(sum((v - 0.8 / 6) ** 2 for v in [0.5, -2, 0.1, 3, -1, 0.2]) / 5)
    scale = np.float32(2.0 * sigma)
    wire = container_of("compeft(density=0.5,alpha=2.0)", {"a": A, "b": B})
    blob_a, blob_b = wire["0.cp"].tobytes(), wire["1.cp"].tobytes()
    # a: n=4, k=2, gaps [1, 1] at width 1 (header 0x41), then signs (-, +): stream 11 10 -> 0xE0
    assert blob_a[:2] + blob_a[6:] == bytes([4, 2, 0x41, 0xE0])
    # b: n=2, k=1, gap [0] at width 0 (0x40), sign (-): stream 1 -> 0x80
    assert blob_b[:2] + blob_b[6:] == bytes([2, 1, 0x40, 0x80])
    # the float32 scale (bytes 2..5) comes from a float reduction: pinned as a value, not as bytes
    for blob in (blob_a, blob_b):
        np.testing.assert_allclose(np.frombuffer(blob[2:6], "<f4"), [scale], rtol=1e-6)
    _, out = roundtrip("compeft(density=0.5,alpha=2.0)", {"a": A, "b": B})
    np.testing.assert_allclose(out["a"], [0, -scale, 0, scale], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [-scale, 0], rtol=1e-6)
    assert abs(float(scale) - 2 * 1.6848343) < 1e-5


@settings(max_examples=80, deadline=None)
@given(float_deltas(max_abs=1e6), st.floats(1e-3, 1.0), st.floats(0.01, 10.0))
def test_global_top_k_ternary_property(delta: dict[str, np.ndarray], density: float, alpha: float) -> None:
    text = f"compeft(density={density!r},alpha={alpha!r})"
    payload, out = roundtrip(text, delta)
    tau = np.concatenate([x.reshape(-1) for x in delta.values()]).astype(np.float64)
    got = np.concatenate([out[name].reshape(-1) for name in delta])
    assert got.dtype == np.float32
    if tau.size == 0:
        return
    scale = np.float32(alpha * np.std(tau, ddof=1 if tau.size > 1 else 0))
    k = kept_count(density, tau.size)
    assert set(np.unique(np.abs(got)).tolist()) <= {0.0, float(scale)}
    kept = got != 0 if scale > 0 else None
    if kept is not None:
        assert int(kept.sum()) == k
        assert np.all(np.sign(got[kept]) == np.where(tau[kept] < 0, -1, 1))
        if k < tau.size:
            assert np.abs(tau[kept]).min() >= np.abs(tau[~kept]).max()
    bound = 1 + sum(
        8 + len(str(i)) + 3 + 5 + 4 + 1 + math.ceil(x.size * (width_for(x.size - 1) + 1) / 8)
        for i, x in enumerate(delta.values())
    )
    assert len(payload) <= bound


def test_dense_trits_win_at_high_density() -> None:
    x = {"w": np.random.default_rng(0).standard_normal(1000).astype(np.float32)}
    wire = container_of("compeft(density=0.9)", x)
    assert wire["0.cp"][8] == 0xC0 and wire["0.cp"].size == 9 + 200  # 5 trits per byte
    _, out = roundtrip("compeft(density=0.9)", x)
    assert np.count_nonzero(out["w"]) == 900
    sparse = container_of("compeft(density=0.05)", x)
    assert sparse["0.cp"][7] >> 6 == 2  # Golomb-Rice positions at 5 %


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=40))
def test_trit_packing_roundtrip(digits: list[int]) -> None:
    data = pack_trits(np.array(digits, np.int64))
    assert len(data) == math.ceil(len(digits) / 5)
    assert unpack_trits(data, len(digits), "t").tolist() == digits


def test_pinned_payloads_and_params() -> None:
    # global top-3 of the 29 entries: |x| = 11.5/7 at 0 and 23, then the tied 10.5/7 at 1 and 22
    # (the lower index wins); a = std of all 29 entries (ddof 1). Layout and values are pinned.
    payload, out = roundtrip("compeft", pinned_input())
    assert layout(payload) == [("0.cp", "uint8", (10,)), ("1.cp", "uint8", (7,))]
    a = 0.96305668  # = np.std(concatenated input, ddof=1)
    weight = np.zeros(24)
    weight[[0, 1, 23]] = [-a, -a, a]
    np.testing.assert_allclose(out["layer.weight"].reshape(-1), weight, rtol=1e-6)
    assert not out["layer.bias"].any()
    for bad in ("compeft(density=0.0)", "compeft(density=1.5)", "compeft(alpha=0.0)", "compeft(alpha=-1.0)"):
        with pytest.raises(CodecError):
            pipeline(bad)
    with pytest.raises(CodecError, match="non-finite"):
        pipeline("compeft").encode({"x": np.array([1.0, np.inf], np.float32)}, np.random.default_rng(0))
    _, out = roundtrip("compeft", {"e": np.zeros(0, np.float32)})
    assert out["e"].shape == (0,)


_TABLE = [TensorInfo("a", (4,), "float32")]
_GOOD = container_of("compeft(density=0.5,alpha=2.0)", {"a": A, "b": B})["0.cp"].tobytes()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_GOOD, None),
        (_GOOD[:-1], "too short"),
        (_GOOD + b"\x00", "needs"),
        (_GOOD[:-1] + b"\xe1", "padding"),
        (bytes([4, 5]) + _GOOD[2:], "limit"),  # k = 5 > n = 4
        (bytes([5]) + _GOOD[1:], "limit"),  # n = 5 > the table's 4
        (_GOOD[:2] + np.array([-1.0], "<f4").tobytes() + _GOOD[6:], "scale"),
        (_GOOD[:2] + np.array([np.nan], "<f4").tobytes() + _GOOD[6:], "scale"),
        (_GOOD[:6] + b"\xc0" + bytes([1 * 27 + 2 * 1, 0]), "trit packing"),  # 2 bytes for 4 trits
        (_GOOD[:6] + b"\xc0" + bytes([243]), "trit packing"),
        (_GOOD[:6] + b"\xc0" + bytes([27]), "kept count"),  # one non-zero trit, k = 2
        (_GOOD[:6] + b"\xc1" + bytes([0]), "trit header"),
        (_GOOD[:6] + b"\xc0" + bytes([1]), "padding"),  # 5th trit set for a 4-element tensor
    ],
)
def test_hostile_blobs(data: bytes, match: str | None) -> None:
    blob = pack_arrays({"0.cp": np.frombuffer(data, np.uint8)})
    if match is None:
        assert pipeline("compeft(density=0.5,alpha=2.0)").decode(blob, _TABLE)["a"][1] < 0
        return
    refused("compeft(density=0.5,alpha=2.0)", blob, _TABLE, match)
