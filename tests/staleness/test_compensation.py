"""Test trio for the ``direct`` and ``weighted`` compensation policies and the policy registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.protocols import ValidationError
from stamen.server.staleness import ModelVersions, compensation, functions

_finite = st.floats(-1e3, 1e3, width=32)


def _delta() -> dict[str, np.ndarray]:
    return {"w": np.array([[1.0, -2.0], [0.5, 4.0]], np.float32), "b": np.array([-1.0], np.float32)}


def test_direct_and_weighted_hand_computed() -> None:
    d = _delta()
    out = compensation.create("direct")(d, 7)
    assert out.keys() == d.keys() and all(np.array_equal(out[k], d[k]) for k in d)
    half = compensation.create("weighted")(d, 20)  # 2^(-20/20) = 0.5
    np.testing.assert_allclose(half["w"], [[0.5, -1.0], [0.25, 2.0]])
    np.testing.assert_allclose(half["b"], [-0.5])
    hinge = compensation.create("weighted", function="hinge", function_params={"a": 10, "b": 4})
    np.testing.assert_allclose(hinge(d, 5)["b"], [-1.0 / 11], rtol=1e-6)
    fedbuff = compensation.create("weighted", function=functions.create("fedbuff"))
    np.testing.assert_allclose(fedbuff(d, 3)["w"], d["w"] * 0.5)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=_finite))
def test_identity_at_tau_zero_and_inputs_untouched(w: np.ndarray) -> None:
    delta = {"w": w}
    keep = w.copy()
    versions = ModelVersions({"w": w + 1}, {"w": w + 1}, 3)
    for name in ("direct", "weighted", "dcasgd"):
        out = compensation.create(name)(delta, 0, versions)
        assert out["w"].dtype == np.float32 and out["w"] is not w
        np.testing.assert_array_equal(out["w"], w)
    np.testing.assert_array_equal(w, keep)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (5,), elements=_finite), st.integers(0, 500))
def test_weighted_norm_is_non_increasing_in_tau(w: np.ndarray, tau: int) -> None:
    policy = compensation.create("weighted")
    older, newer = policy({"w": w}, tau + 1)["w"], policy({"w": w}, tau)["w"]
    assert np.all(np.abs(older) <= np.abs(newer))


def test_weighted_pinned_value() -> None:
    rng = np.random.default_rng(3)
    delta = {"w": rng.standard_normal(4).astype(np.float32)}
    out = compensation.create("weighted")(delta, 7)["w"]  # 2^(-7/20) = 0.784584
    np.testing.assert_allclose(out, [1.601273, -2.005134, 0.328034, -0.445463], rtol=1e-5)


def test_registry_and_validation_errors() -> None:
    assert compensation.available() == ["dcasgd", "direct", "gi", "weighted"]
    with pytest.raises(ValueError, match="unknown compensation policy 'dc'; available: dcasgd"):
        compensation.create("dc")
    with pytest.raises(ValueError, match=r"'dcasgd': unknown parameter\(s\) \['lambda'\]; allowed: lam"):
        compensation.create("dcasgd", **{"lambda": 1.0})
    with pytest.raises(ValueError, match="function_params apply only"):
        compensation.create("weighted", function=functions.create("constant"), function_params={"a": 1})
    with pytest.raises(ValueError, match="unknown parameter"):
        compensation.create("weighted", function="hinge", function_params={"z": 1})
    with pytest.raises(ValidationError, match="non-finite"):
        compensation.create("direct")({"w": np.array([np.nan], np.float32)}, 1)
    with pytest.raises(ValidationError, match="at least one tensor"):
        compensation.create("direct")({}, 1)
    with pytest.raises(ValueError, match="already registered"):
        compensation.register("direct", needs_versions=False)(type("X", (), {}))
    assert compensation.create("dcasgd").needs_versions and not compensation.create("direct").needs_versions
