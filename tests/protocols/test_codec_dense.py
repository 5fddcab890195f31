"""Codec trio for ``dense``: hand-computed bytes, exact-round-trip property, pinned layout and bytes
(dense does no floating-point work: its bytes are the input's own)."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from proto_helpers import float_deltas, header_bound, layout, pinned_input, roundtrip


def test_tiny_by_hand() -> None:
    payload, out = roundtrip("dense", {"w": np.array([1.5, -2.0], np.float32)})
    assert payload == b"\x01" + b"\x01" + b"0" + bytes([11, 1, 2]) + struct.pack("<2f", 1.5, -2.0)
    assert out["w"].dtype == np.float32 and out["w"].tolist() == [1.5, -2.0]
    assert out["w"].flags.writeable


@settings(max_examples=80, deadline=None)
@given(float_deltas())
def test_exact_roundtrip_and_size_property(delta: dict[str, np.ndarray]) -> None:
    payload, out = roundtrip("dense", delta)
    assert list(out) == list(delta)
    for name, arr in delta.items():
        assert out[name].shape == arr.shape
        assert out[name].tobytes() == arr.tobytes()  # bit-exact, including -0.0
    n = sum(a.size for a in delta.values())
    assert 4 * n < len(payload) <= 4 * n + header_bound(delta, 1, 0)


def test_pinned_payload() -> None:
    delta = pinned_input()
    payload, _ = roundtrip("dense", delta)
    by_hand = (
        b"\x02"
        + b"\x010"
        + bytes([11, 2, 4, 6])
        + delta["layer.weight"].tobytes()
        + b"\x011"
        + bytes([11, 1, 5])
        + delta["layer.bias"].tobytes()
    )
    assert payload == by_hand and len(payload) == 4 * 29 + 1 + 6 + 5
    assert layout(payload) == [("0", "float32", (4, 6)), ("1", "float32", (5,))]
