"""Codec trio for ``lowrank``: a hand-factorable matrix, Eckart–Young near-optimality (property),
pinned payload; plus pass-through rules and strict decoding of hostile factors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from proto_helpers import container_of, layout, pinned_input, pipeline, refused, roundtrip

from stamen.protocols import CodecError, TensorInfo
from stamen.protocols.codecs.lowrank import factorize
from stamen.protocols.container import pack_arrays


def test_tiny_by_hand() -> None:
    # x = u vᵀ with u = (1, 2, 0, 0, 0, 0), v = (3, 0, 0, 0, 0, 0, 4): rank 1, singular value 5·√5
    u = np.array([1, 2, 0, 0, 0, 0], np.float32)
    v = np.array([3, 0, 0, 0, 0, 0, 4], np.float32)
    x = np.outer(u, v)
    wire = container_of("lowrank(rank=1)", {"w": x, "b": np.array([1.5, -2.0], np.float32)})
    assert sorted(wire) == ["0.la", "0.lb", "1"]
    b, a = wire["0.lb"], wire["0.la"]
    assert b.shape == (6, 1) and a.shape == (1, 7) and b.dtype == a.dtype == np.float32
    root = np.sqrt(np.float32(5 * np.sqrt(5)))  # √σ on each side
    np.testing.assert_allclose(np.abs(b[:, 0]), root * np.abs(u) / np.sqrt(5), rtol=1e-5)
    np.testing.assert_allclose(np.abs(a[0]), root * np.abs(v) / 5, rtol=1e-5)
    _, out = roundtrip("lowrank(rank=1)", {"w": x, "b": np.array([1.5, -2.0], np.float32)})
    np.testing.assert_allclose(out["w"], x, atol=1e-5)
    assert out["b"].tolist() == [1.5, -2.0]  # 1-D tensors pass through exactly


def test_pass_through_when_factors_are_not_smaller() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)  # k (m + n) = 2 * 7 >= 12 at rank 2
    wire = container_of("lowrank(rank=2)", {"w": x, "t": np.ones((2, 2, 2), np.float32)})
    assert sorted(wire) == ["0", "1"]
    np.testing.assert_array_equal(roundtrip("lowrank(rank=2)", {"w": x})[1]["w"], x)


@settings(max_examples=40, deadline=None)
@given(st.integers(6, 40), st.integers(6, 40), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_exact_for_low_rank_and_near_eckart_young(m: int, n: int, rank: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    low = (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))).astype(np.float32)
    if rank * (m + n) < m * n:
        _, out = roundtrip(f"lowrank(rank={rank})", {"w": low}, seed=seed % 7)
        np.testing.assert_allclose(out["w"], low, atol=1e-4 * max(1.0, float(np.abs(low).max())))
    full = rng.standard_normal((m, n)).astype(np.float32)
    b, a = factorize(full, rank, 2, np.random.default_rng(seed))
    s = np.linalg.svd(full.astype(np.float64), compute_uv=False)
    optimal = np.sqrt(np.sum(s[rank:] ** 2))  # Eckart–Young: best rank-k Frobenius error
    err = np.linalg.norm(full - b.astype(np.float64) @ a.astype(np.float64))
    assert err <= 1.1 * optimal + 1e-4


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.floats(-1e3, 1e3, width=32)
    )
)
def test_decoded_shape_and_finite_property(x: np.ndarray) -> None:
    _, out = roundtrip("lowrank(rank=2)", {"w": x})
    assert out["w"].shape == x.shape and out["w"].dtype == np.float32
    assert np.all(np.isfinite(out["w"]))


def test_pinned_payload() -> None:
    delta = pinned_input() | {"big": np.outer(np.arange(8), np.arange(1, 10)).astype(np.float32)}
    payload, out = roundtrip("lowrank(rank=1,power_iters=1)", delta, seed=0)
    np.testing.assert_allclose(out["big"], delta["big"], atol=1e-4)  # rank 1: exact up to rounding
    # count + per array (key length, key, dtype, ndim, one varint per dim) + float32 data
    assert len(payload) == 1 + (9 + 4 * 4) + (9 + 4 * 6) + (5 + 4 * 5) + (9 + 4 * 8) + (9 + 4 * 9)
    assert layout(payload) == [
        ("0.lb", "float32", (4, 1)),
        ("0.la", "float32", (1, 6)),
        ("1", "float32", (5,)),
        ("2.lb", "float32", (8, 1)),
        ("2.la", "float32", (1, 9)),
    ]
    # The factors' bytes depend on the BLAS kernel the CPU selects (and their signs on the sketch),
    # so the decoded values are pinned instead. layer.weight = row offset (6i - 9) / 7 + column ramp
    # j / 7; the offsets carry most of the energy, so the best rank-1 approximation is the row means.
    np.testing.assert_allclose(
        out["layer.weight"], np.repeat([[-9.0], [-3.0], [3.0], [9.0]], 6, axis=1) / 7, atol=1e-5
    )
    assert out["layer.bias"].tolist() == delta["layer.bias"].tolist()  # 1-D: passes through exactly


def test_params_validated() -> None:
    for text in ("lowrank(rank=0)", "lowrank(rank=4097)", "lowrank(power_iters=11)", "lowrank(alpha=1)"):
        with pytest.raises(CodecError):
            pipeline(text)
    assert pipeline("lowrank").spec.to_string() == "lowrank(power_iters=2,rank=8)"


def test_non_finite_refused_at_encode() -> None:
    x = np.ones((20, 20), np.float32)
    x[3, 4] = np.nan
    with pytest.raises(CodecError, match="non-finite"):
        roundtrip("lowrank(rank=1)", {"w": x})


_TABLE = [TensorInfo("w", (6, 7), "float32")]


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"0.lb": np.ones((6, 1), np.float32), "0.la": np.ones((1, 7), np.float32)}, None),
        ({"0.lb": np.ones((6, 2), np.float32), "0.la": np.ones((1, 7), np.float32)}, "shapes"),
        ({"0.lb": np.ones((6, 2), np.float32), "0.la": np.ones((2, 7), np.float32)}, "shapes"),  # > rank 1
        ({"0.lb": np.ones((6, 1), np.int32), "0.la": np.ones((1, 7), np.float32)}, "float"),
        ({"0.lb": np.ones(6, np.float32), "0.la": np.ones((1, 7), np.float32)}, "2-D"),
        ({"0.lb": np.ones((2**16, 1), np.float32), "0.la": np.ones((1, 2**16), np.float32)}, "limit"),
        ({"0.lb": np.ones((6, 1), np.float32)}, "table"),
    ],
)
def test_hostile_factors(arrays: dict[str, np.ndarray], match: str | None) -> None:
    if match is None:
        assert (
            pipeline("lowrank(rank=1)").decode(pack_arrays(arrays), _TABLE)["w"].tolist()
            == np.ones((6, 7)).tolist()
        )
        return
    refused("lowrank(rank=1)", pack_arrays(arrays), _TABLE, match)
