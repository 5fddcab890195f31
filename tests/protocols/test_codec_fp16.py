"""Codec trio for ``fp16``: hand-computed values, fp16-rounding property, pinned digest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from proto_helpers import container_of, float_deltas, header_bound, pinned_input, roundtrip, sha

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
    assert sha(payload) == "d4dbe97ed5fcbf8c99469fbe17da53e47d43b1485b65b426f0cee02179c92d76"
    assert float(np.abs(out["layer.weight"] - pinned_input()["layer.weight"]).max()) <= 2**-10
