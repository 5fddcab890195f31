"""Codec trio for ``rqm``: deterministic cases by hand (q = 1, q = 0, m = 2 frequencies), exact
payload sizes and on-grid outputs as a property, unbiasedness, pinned payloads; hostile blobs.
(The sampler's law is checked against the exact accountant pmf in tests/server/test_rqm_rdp.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import container_of, float_deltas, layout, pinned_input, pipeline, refused, roundtrip

from stamen.protocols import CodecError, TensorInfo
from stamen.protocols.codecs.rqm import levels, quantize
from stamen.protocols.container import pack_arrays

HAND = "rqm(c=1.0,delta=1.0,m=5,q=1.0)"  # levels -2, -1, 0, 1, 2, all kept


def test_tiny_by_hand() -> None:
    x = np.array([-1.0, 0.0, 1.0, 5.0, -7.0], np.float32)  # on levels after clipping to [-1, 1]
    wire = container_of(HAND, {"x": x})
    # z = 1, 2, 3, 3, 1 at 3 bits: 001 010 011 011 001 (+ 1 pad bit) -> 0x29 0xB2
    assert wire["0.rq"].tobytes() == bytes([5, 0x29, 0xB2])
    _, out = roundtrip(HAND, {"x": x})
    assert out["x"].tolist() == [-1, 0, 1, 1, -1]
    _, out = roundtrip("rqm(c=1.0,delta=1.0,m=5,q=0.0)", {"x": np.zeros(50, np.float32)})
    assert set(out["x"].tolist()) <= {-2.0, 2.0}  # q = 0: only the end levels exist
    assert levels(1.0, 1.0, 5).tolist() == [-2, -1, 0, 1, 2]


def test_two_levels_send_one_bit_with_the_right_frequency() -> None:
    c, delta, n = 1.0, 0.5, 100_000
    z = quantize(np.full(n, c), c, delta, 2, 0.5, np.random.default_rng(0))
    p_up = (c + (c + delta)) / (2 * (c + delta))  # (x + X) / 2X = 0.8333
    assert abs(z.mean() - p_up) < 5 * math.sqrt(p_up * (1 - p_up) / n)
    payload, _ = roundtrip("rqm(m=2)", {"x": np.zeros(800, np.float32)})
    assert len(payload) == 1 + (8 + 2 + 100)  # container + varint(800) + 800 bits


@settings(max_examples=80, deadline=None)
@given(
    float_deltas(max_abs=1e3),
    st.floats(1e-3, 10.0),
    st.floats(1e-3, 10.0),
    st.integers(2, 256),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32),
)
def test_outputs_on_the_grid_and_exact_sizes(
    delta: dict[str, np.ndarray], c: float, ext: float, m: int, q: float, seed: int
) -> None:
    text = f"rqm(c={c!r},delta={ext!r},m={m},q={q!r})"
    payload, out = roundtrip(text, delta, seed)
    grid = levels(c, ext, m).astype(np.float32)
    width = math.ceil(math.log2(m))
    size = 1
    for i, (name, x) in enumerate(delta.items()):
        assert np.isin(out[name], grid).all()
        clipped = np.clip(x.astype(np.float64), -c, c)
        step = 2 * (c + ext) / (m - 1)
        if q == 1.0:  # all levels kept: the two grid neighbours of x
            assert np.all(np.abs(out[name] - clipped) <= step * (1 + 1e-5) + 1e-6)
        varint = max(1, (x.size.bit_length() + 6) // 7)
        size += (len(str(i)) + 9) + varint + math.ceil(x.size * width / 8)  # container + blob
    assert len(payload) <= size


def test_unbiased_for_the_clipped_input() -> None:
    x = np.array([-3.0, -0.9, -0.31, 0.0, 0.27, 0.77, 1.0], np.float32)
    rng = np.random.default_rng(4)
    grid = levels(1.0, 0.5, 6)
    draws = np.stack([grid[quantize(x, 1.0, 0.5, 6, 0.3, rng).astype(int)] for _ in range(20_000)])
    assert np.abs(draws.mean(axis=0) - np.clip(x, -1, 1)).max() < 5 * 1.5 / math.sqrt(20_000)


def test_pinned_payloads_and_params() -> None:
    payload, out = roundtrip("rqm", pinned_input(), seed=11)
    assert len(payload) == 1 + (8 + 1 + 12) + (8 + 1 + 3)  # 24 and 5 coordinates at 4 bits
    assert layout(payload) == [("0.rq", "uint8", (13,)), ("1.rq", "uint8", (4,))]
    # the level indices seed 11 draws (an index moves only if a draw lands on a rounding boundary),
    # and their levels B(z) = -0.2 + z * 0.4 / 15 as values with a tolerance
    weight_z = [4, 3, 4, 3, 6, 4, 3, 4, 4, 7, 4, 5, 12, 11, 11, 12, 10, 12, 12, 12, 6, 13, 10, 12]
    bias_z = [3, 4, 8, 12, 11]
    np.testing.assert_allclose(
        out["layer.weight"].reshape(-1), -0.2 + np.array(weight_z) * 0.4 / 15, rtol=1e-6
    )
    np.testing.assert_allclose(out["layer.bias"], -0.2 + np.array(bias_z) * 0.4 / 15, rtol=1e-6)
    for bad in ("rqm(c=0.0)", "rqm(delta=-1.0)", "rqm(m=1)", "rqm(m=257)", "rqm(q=1.5)"):
        with pytest.raises(CodecError):
            pipeline(bad)
    with pytest.raises(CodecError, match="non-finite"):
        pipeline("rqm").encode({"x": np.array([np.nan], np.float32)}, np.random.default_rng(0))


_TABLE = [TensorInfo("x", (5,), "float32")]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bytes([5, 0x29, 0xB2]), None),
        (bytes([5, 0x29]), "content needs 15"),
        (bytes([5, 0x29, 0xB2, 0x00]), "needs"),
        (bytes([5, 0x29, 0xB3]), "padding"),
        (bytes([5, 0xE9, 0xB2]), "index"),  # z = 7 >= m = 5
        (bytes([6, 0x29, 0xB2]), "limit"),
        (bytes([0x80]), "truncated"),
    ],
)
def test_hostile_blobs(data: bytes, match: str | None) -> None:
    wire = pack_arrays({"0.rq": np.frombuffer(data, np.uint8)})
    if match is None:
        assert pipeline(HAND).decode(wire, _TABLE)["x"].tolist() == [-1, 0, 1, 1, -1]
        return
    refused(HAND, wire, _TABLE, match)
