"""Codec trio for ``fp16``: hand-computed values, fp16-rounding property, pinned layout and values;
exact bytes only for inputs that float16 holds exactly."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from proto_helpers import container_of, float_deltas, header_bound, layout, pinned_input, roundtrip

from stamen.protocols import CodecError


def test_tiny_by_hand() -> None:
    x = np.array([1.0, 0.1, -65504.0, 2.0**-24, 1e-9, 3.0], np.float32)
    wire = container_of("fp16", {"x": x})
    assert wire["0"].dtype == np.float16
    payload, out = roundtrip("fp16", {"x": x})
    assert out["x"].tolist() == [1.0, 0.0999755859375, -65504.0, 2.0**-24, 0.0, 3.0]
    assert len(payload) == 6 + 2 * 6


@settings(max_examples=80, deadline=None)
@given(float_deltas(max_abs=65504.0))
def test_equals_fp16_rounding_property(delta: dict[str, np.ndarray]) -> None:
    payload, out = roundtrip("fp16", delta)
    for name, arr in delta.items():
        expected = arr.astype(np.float16).astype(np.float32)
        assert out[name].dtype == np.float32 and out[name].shape == arr.shape
        assert out[name].tobytes() == expected.tobytes()
    n = sum(a.size for a in delta.values())
    assert 2 * n < len(payload) <= 2 * n + header_bound(delta, 1, 0)


def test_overflow_is_refused_not_sent_as_inf() -> None:
    with pytest.raises(CodecError, match="float16") as info:
        roundtrip("fp16", {"big.tensor": np.array([1.0, 7e4], np.float32)})
    assert "big.tensor" in str(info.value)


def test_pinned_payload() -> None:
    payload, out = roundtrip("fp16", pinned_input())
    assert len(payload) == 2 * 29 + 12
    assert layout(payload) == [("0", "float16", (4, 6)), ("1", "float16", (5,))]
    # (i - 11.5) / 7 in float16: 11 significant bits, e.g. 11.5 / 7 = 1.642857... -> 1.642578125
    first_row = [-1.642578125, -1.5, -1.357421875, -1.2138671875, -1.0712890625, -0.9287109375]
    np.testing.assert_allclose(out["layer.weight"][0], first_row, rtol=1e-7)
    np.testing.assert_allclose(out["layer.weight"][3], -np.array(first_row[::-1]), rtol=1e-7)
    np.testing.assert_allclose(out["layer.bias"], [-1.0, -0.5, 0.0, 0.5, 1.0], rtol=1e-7)
    assert float(np.abs(out["layer.weight"] - pinned_input()["layer.weight"]).max()) <= 2**-10


def test_pinned_bytes_of_exactly_representable_input() -> None:
    exact = {"w": np.array([1.5, -2.0, 0.25, 2.0**-24, 65504.0], np.float32)}  # all exact in float16
    payload, out = roundtrip("fp16", exact)
    assert payload == b"\x01" + b"\x010" + bytes([10, 1, 5]) + struct.pack(
        "<5e", 1.5, -2.0, 0.25, 2.0**-24, 65504.0
    )
    assert out["w"].tolist() == exact["w"].tolist()
