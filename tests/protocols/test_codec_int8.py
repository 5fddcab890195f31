"""Codec trio for ``int8``: hand-computed codes, error-bound and unbiasedness properties, pinned
digest; composition with topk and itself; strict decoding of hostile arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_helpers import (
    container_of,
    float_deltas,
    header_bound,
    layout,
    pinned_input,
    pipeline,
    refused,
    roundtrip,
)

from stamen.protocols import TensorInfo
from stamen.protocols.container import pack_arrays

_SLACK = 2 * float(np.finfo(np.float32).smallest_subnormal)


def test_tiny_by_hand_nearest() -> None:
    x = np.array([127.0, -63.4, 31.75, 0.0, 0.5], np.float32)  # max|x| = 127, so scale = 1
    wire = container_of("int8(stochastic=false)", {"x": x})
    assert list(wire) == ["0.q", "0.qs"]
    assert wire["0.q"].dtype == np.int8 and wire["0.q"].tolist() == [127, -63, 32, 0, 0]
    assert wire["0.qs"].dtype == np.float32 and wire["0.qs"].shape == () and wire["0.qs"] == 1.0
    payload, out = roundtrip("int8(stochastic=false)", {"x": x})
    assert out["x"].tolist() == [127.0, -63.0, 32.0, 0.0, 0.0]
    assert len(payload) == 1 + (7 + 5) + (7 + 4)


def test_tiny_stochastic_rounds_to_a_neighbour() -> None:
    x = np.array([-127.0, 0.5, 2.0], np.float32)
    seen = {tuple(roundtrip("int8", {"x": x}, seed=s)[1]["x"].tolist()) for s in range(40)}
    assert {v[0] for v in seen} == {-127.0} and {v[2] for v in seen} == {2.0}
    assert {v[1] for v in seen} == {0.0, 1.0}


def test_all_zero_tensor_has_zero_scale() -> None:
    wire = container_of("int8", {"z": np.zeros(4, np.float32)})
    assert wire["0.qs"] == 0.0 and not wire["0.q"].any()
    assert roundtrip("int8", {"z": np.zeros(4, np.float32)})[1]["z"].tolist() == [0.0] * 4


@settings(max_examples=80, deadline=None)
@given(float_deltas(), st.booleans(), st.integers(0, 2**32))
def test_error_within_one_step_property(delta: dict, stochastic: bool, seed: int) -> None:
    text = f"int8(stochastic={'true' if stochastic else 'false'})"
    wire = container_of(text, delta, seed)
    payload, out = roundtrip(text, delta, seed)
    for i, (name, x) in enumerate(delta.items()):
        scale = float(wire[f"{i}.qs"])
        amax = float(np.abs(x).max()) if x.size else 0.0
        assert amax <= 127 * scale * (1 + 1e-6) and scale <= amax / 127 * (1 + 1e-6) + _SLACK
        step = 1.0 if stochastic else 0.5
        err = np.abs(out[name].astype(np.float64) - x.astype(np.float64))
        assert np.all(err <= scale * (step + 2e-5) + _SLACK)
    n = sum(a.size for a in delta.values())
    assert len(payload) <= n + 4 * len(delta) + header_bound(delta, 2, 2)


def test_stochastic_rounding_is_unbiased() -> None:
    # scale = 1; 0.3 sits between codes 0 and 1. Averaging 40k independent roundings must land
    # within 0.01 of 0.3 (5 sigma); nearest (0.0) or floor/ceil (0.0/1.0) rounding cannot.
    x = np.concatenate([[127.0], np.full(40_000, 0.3), np.full(40_000, -0.3)]).astype(np.float32)
    out = roundtrip("int8(stochastic=true)", {"x": x}, seed=7)[1]["x"]
    assert abs(out[1:40_001].mean() - 0.3) < 0.01
    assert abs(out[40_001:].mean() + 0.3) < 0.01
    biased = roundtrip("int8(stochastic=false)", {"x": x}, seed=7)[1]["x"]
    assert abs(biased[1:40_001].mean() - 0.3) > 0.01  # the test can tell the difference


def test_composes_with_topk_and_with_itself() -> None:
    delta = pinned_input()
    wire = container_of("topk(ratio=0.25)+int8", delta)
    assert wire["0.i"].dtype == np.uint16 and wire["0.s"].dtype == np.uint32
    assert wire["0.v.q"].dtype == np.int8 and wire["0.v.qs"].dtype == np.float32
    _, out = roundtrip("topk(ratio=0.25)+int8", delta)
    assert np.count_nonzero(out["layer.weight"]) <= 6
    _, twice = roundtrip("int8+int8", delta)
    for name, x in delta.items():
        assert np.abs(twice[name] - x).max() <= 2 * np.abs(x).max() / 127 * 1.01


def test_pinned_payloads() -> None:
    # Layout, codes and decoded values are pinned, not the payload's digest.
    stochastic, noisy = roundtrip("int8", pinned_input(), seed=0)
    nearest, out = roundtrip("int8(stochastic=false)", pinned_input())
    assert len(stochastic) == len(nearest) == 1 + (8 + 24) + (7 + 4) + (7 + 5) + (7 + 4)
    assert (
        layout(stochastic)
        == layout(nearest)
        == [
            ("0.q", "int8", (4, 6)),
            ("0.qs", "float32", ()),
            ("1.q", "int8", (5,)),
            ("1.qs", "float32", ()),
        ]
    )
    wire = container_of("int8(stochastic=false)", pinned_input())
    step_w, step_b = (11.5 / 7) / 127, 1 / 127  # max|x| / 127
    np.testing.assert_allclose([float(wire["0.qs"]), float(wire["1.qs"])], [step_w, step_b], rtol=1e-6)
    assert wire["0.q"].reshape(-1).tolist() == [round((i - 11.5) / 11.5 * 127) for i in range(24)]
    assert wire["1.q"].tolist() == [-127, -64, 0, 64, 127]  # 63.5 rounds half to even
    np.testing.assert_allclose(out["layer.bias"], np.array([-127, -64, 0, 64, 127]) * step_b, rtol=1e-6)
    # seed 0 rounds 63.5 down to 63 and -27.6, -16.6, -5.5 (layer.weight[1, 3:]) up
    codes = container_of("int8", pinned_input(), seed=0)
    assert codes["1.q"].tolist() == [-127, -63, 0, 63, 127]
    assert codes["0.q"].reshape(-1)[9:12].tolist() == [-27, -16, -5]
    np.testing.assert_allclose(noisy["layer.bias"], np.array([-127, -63, 0, 63, 127]) * step_b, rtol=1e-6)
    np.testing.assert_allclose(
        noisy["layer.weight"].reshape(-1), codes["0.q"].reshape(-1) * step_w, rtol=1e-6
    )


_TABLE = [TensorInfo("x", (3,), "float32")]


@pytest.mark.parametrize(
    ("q", "scale", "match"),
    [
        (np.array([1, -127, 3], np.int8), np.array(0.5, np.float32), None),
        (np.array([1, -128, 3], np.int8), np.array(0.5, np.float32), "-127"),
        (np.array([1, 2, 3], np.int16), np.array(0.5, np.float32), "int8"),
        (np.array([1, 2, 3], np.int8), np.array(-0.5, np.float32), ">= 0"),
        (np.array([1, 2, 3], np.int8), np.array(np.nan, np.float32), "finite"),
        (np.array([1, 2, 3], np.int8), np.array([0.5], np.float32), "scalar"),
        (np.array([1, 2, 3], np.int8), np.array(0.5, np.float64), "scalar"),
    ],
)
def test_hostile_wire_arrays(q: np.ndarray, scale: np.ndarray, match: str | None) -> None:
    payload = pack_arrays({"0.q": q, "0.qs": scale})
    if match is None:
        assert pipeline("int8").decode(payload, _TABLE)["x"].tolist() == [0.5, -63.5, 1.5]
        return
    refused("int8", payload, _TABLE, match)


def test_subnormal_tensor_keeps_the_error_bound() -> None:
    tiny = np.finfo(np.float32).smallest_subnormal
    x = np.array([190, 1, -95], np.float32) * tiny  # max/127 rounds down to 1 * tiny
    wire = container_of("int8(stochastic=false)", {"x": x})
    scale = float(wire["0.qs"])
    assert 190 * float(tiny) <= 127 * scale
    out = roundtrip("int8(stochastic=false)", {"x": x})[1]["x"]
    assert np.all(np.abs(out.astype(np.float64) - x) <= scale / 2 + _SLACK)
