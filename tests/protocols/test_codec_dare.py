"""Codec trio for ``dare``: the mask by hand from the raw PCG64 stream, drop/rescale properties
(exact round trip, keep rate and unbiasedness), pinned payloads; plus params and hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import container_of, float_deltas, layout, pinned_input, pipeline, refused, roundtrip

from stamen.protocols import CodecError, TensorInfo
from stamen.protocols.codecs.bitpack import ByteWriter
from stamen.protocols.codecs.dare import keep_mask
from stamen.protocols.container import pack_arrays

X = np.arange(1, 9, dtype=np.float32)


def test_mask_by_hand_from_the_raw_stream() -> None:
    raw = np.random.PCG64(1234).random_raw(8)
    np.testing.assert_array_equal(keep_mask(1234, 8, 0.5), raw >= np.uint64(2**63))  # top bit set
    assert keep_mask(1234, 8, 0.0).all()
    raw = np.random.PCG64(7).random_raw(5)
    assert keep_mask(7, 5, 0.75).tolist() == (raw >= np.uint64(3 * 2**62)).tolist()


def test_tiny_by_hand() -> None:
    wire = container_of("dare(p=0.5)", {"x": X}, seed=0)
    seed = int(np.random.default_rng(0).integers(0, 2**64, dtype=np.uint64))
    assert wire["0.dm"].tobytes() == bytes([8]) + seed.to_bytes(8, "little")
    mask = np.random.PCG64(seed).random_raw(8) >= np.uint64(2**63)
    assert wire["0.dv"].tolist() == (X[mask] * 2).tolist()  # survivors divided by 1 - p
    _, out = roundtrip("dare(p=0.5)", {"x": X}, seed=0)
    assert out["x"].tolist() == np.where(mask, X * 2, 0).tolist()
    _, out = roundtrip("dare(p=0.5,rescale=darex,q=0.8)", {"x": X}, seed=0)
    assert out["x"].tolist() == np.where(mask, (X / 0.8).astype(np.float32), 0).tolist()


@settings(max_examples=80, deadline=None)
@given(float_deltas(max_abs=1e6), st.floats(0.0, 0.99), st.integers(0, 2**32))
def test_roundtrip_is_mask_times_rescaled_delta(delta: dict[str, np.ndarray], p: float, seed: int) -> None:
    text = f"dare(p={p!r})"
    wire = container_of(text, delta, seed)
    payload, out = roundtrip(text, delta, seed)
    for i, (name, x) in enumerate(delta.items()):
        mask = keep_mask(int.from_bytes(wire[f"{i}.dm"].tobytes()[-8:], "little"), x.size, p)
        expected = np.where(mask, (x.reshape(-1).astype(np.float64) / (1 - p)).astype(np.float32), 0)
        np.testing.assert_array_equal(out[name].reshape(-1), expected)
    # bound: per tensor two arrays (<= 12 bytes of container each), 9..13 header bytes, survivors
    survivors = {n: int((out[n] != 0).sum() + (delta[n] == 0).sum()) for n in delta}
    assert len(payload) <= 1 + sum(24 + 13 + 4 * survivors[n] for n in delta)


def test_keep_rate_and_unbiasedness() -> None:
    n, p = 200_000, 0.9
    kept = keep_mask(99, n, p).mean()
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 5 sigma
    x = {"x": np.linspace(-1, 1, 50, dtype=np.float32)}
    mean = np.mean([roundtrip("dare(p=0.5)", x, seed=s)[1]["x"] for s in range(2000)], axis=0)
    assert np.abs(mean - x["x"]).max() < 5 * 1.0 / np.sqrt(2000)  # per entry std <= |x| <= 1


def test_pinned_payloads_and_params() -> None:
    payload, out = roundtrip("dare", pinned_input(), seed=5)
    kept = int(np.count_nonzero(out["layer.weight"])) + int(np.count_nonzero(out["layer.bias"]))
    assert len(payload) == 1 + 2 * (8 + 9) + 2 * 8 + 4 * kept  # .dm: n + seed; .dv: survivors
    assert layout(payload) == [
        ("0.dm", "uint8", (9,)),
        ("0.dv", "float32", (5,)),
        ("1.dm", "uint8", (9,)),
        ("1.dv", "float32", (0,)),
    ]
    # the seeds' PCG64 masks keep entries 1, 3, 5, 20, 21 of layer.weight and none of layer.bias,
    # each divided by 1 - p = 0.1 (the survivors' values are pinned with a tolerance, not as bytes)
    survivors = np.flatnonzero(out["layer.weight"])
    assert survivors.tolist() == [1, 3, 5, 20, 21] and not out["layer.bias"].any()
    x = pinned_input()["layer.weight"].reshape(-1)
    np.testing.assert_allclose(out["layer.weight"].reshape(-1)[survivors], x[survivors] / 0.1, rtol=1e-6)
    np.testing.assert_allclose(
        out["layer.weight"].reshape(-1)[survivors],
        [-15.0, -12.142858, -9.285714, 12.142858, 13.571428],
        rtol=1e-6,
    )
    for bad in (
        "dare(p=1.0)",
        "dare(p=-0.1)",
        "dare(rescale=half)",
        "dare(p=0.9,rescale=darex,q=0.05)",
        "dare(p=0.9,q=0.5)",
        "dare(p=0.9,rescale=darex,q=1.5)",
    ):
        with pytest.raises(CodecError):
            pipeline(bad)
    _, out = roundtrip("dare(p=0.0)", pinned_input())
    np.testing.assert_array_equal(out["layer.bias"], pinned_input()["layer.bias"])  # p = 0: lossless


_TABLE = [TensorInfo("x", (8,), "float32")]


def _wire(n: int, seed: int, values: np.ndarray, extra: bytes = b"") -> bytes:
    meta = np.frombuffer(ByteWriter().varint(n).u64(seed).array().tobytes() + extra, np.uint8)
    return pack_arrays({"0.dm": meta, "0.dv": values})


_KEEP = int(keep_mask(3, 8, 0.5).sum())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_wire(8, 3, np.ones(_KEEP, np.float32)), None),
        (_wire(8, 3, np.ones(_KEEP + 1, np.float32)), "survivors"),
        (_wire(8, 3, np.ones(_KEEP, np.int32)), "float"),
        (_wire(8, 3, np.ones((_KEEP, 1), np.float32)), "1-D"),
        (_wire(8, 3, np.ones(_KEEP, np.float32), b"\x00"), "trailing"),
        (_wire(9, 3, np.ones(_KEEP, np.float32)), "limit"),
        (_wire(2**40, 3, np.ones(1, np.float32)), "limit"),  # no 2**40-element mask is drawn
        (pack_arrays({"0.dm": np.zeros(3, np.uint8), "0.dv": np.ones(1, np.float32)}), "truncated"),
    ],
)
def test_hostile_wire_arrays(data: bytes, match: str | None) -> None:
    if match is None:
        assert float(pipeline("dare(p=0.5)").decode(data, _TABLE)["x"].sum()) == _KEEP
        return
    refused("dare(p=0.5)", data, _TABLE, match)
