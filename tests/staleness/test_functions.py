"""Test trio for the staleness weights ``s(tau)`` and their registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import StamenError
from stamen.server.staleness import functions
from stamen.server.staleness.errors import InvalidStalenessError


def test_hand_computed_values() -> None:
    assert functions.create("constant")(7) == 1.0
    assert functions.create("polynomial")(3) == pytest.approx(0.5)  # (1 + 3)^-0.5
    assert functions.create("polynomial", a=1)(4) == pytest.approx(0.2)  # 1 / 5
    hinge = functions.create("hinge", a=10, b=4)
    assert hinge(4) == 1.0 and hinge(5) == pytest.approx(1 / 11) and hinge(6) == pytest.approx(1 / 21)
    assert functions.create("fedbuff")(3) == pytest.approx(0.5)  # 1 / sqrt(4)
    exp = functions.create("exponential")  # 2^(-tau/20)
    assert exp(20) == pytest.approx(0.5) and exp(40) == pytest.approx(0.25)
    assert functions.create("exponential", base=3, scale=2)(2) == pytest.approx(1 / 3)


_PARAMS = {
    "constant": st.just({}),
    "polynomial": st.fixed_dictionaries({"a": st.floats(0, 5)}),
    "hinge": st.fixed_dictionaries({"a": st.floats(0, 50), "b": st.floats(0, 20)}),
    "fedbuff": st.just({}),
    "exponential": st.fixed_dictionaries({"base": st.floats(1.0001, 10), "scale": st.floats(0.1, 100)}),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(_PARAMS)), tau=st.integers(0, 10_000))
def test_weights_are_one_at_zero_bounded_and_non_increasing(data: st.DataObject, name: str, tau: int) -> None:
    fn = functions.create(name, **data.draw(_PARAMS[name]))
    assert fn(0) == 1.0
    assert 0.0 <= fn(tau + 1) <= fn(tau) <= 1.0


def test_pinned_values() -> None:
    taus = [0, 1, 2, 5, 10, 40, 100]
    pinned = {
        "polynomial": [1.0, 0.707107, 0.57735, 0.408248, 0.301511, 0.156174, 0.0995037],
        "hinge": [1.0, 1.0, 1.0, 0.0909091, 0.0163934, 0.00277008, 0.00104058],  # tau=40: 1/361
        "fedbuff": [1.0, 0.707107, 0.57735, 0.408248, 0.301511, 0.156174, 0.0995037],
        "exponential": [1.0, 0.965936, 0.933033, 0.840896, 0.707107, 0.25, 0.03125],
    }
    for name, expected in pinned.items():
        np.testing.assert_allclose([functions.create(name)(t) for t in taus], expected, rtol=1e-5)


def test_numpy_integer_tau_is_accepted() -> None:
    assert functions.create("fedbuff")(np.int64(3)) == pytest.approx(0.5)


@pytest.mark.parametrize("tau", [-1, 1.0, True, "2", None])
def test_bad_tau_is_refused_with_a_typed_error(tau: object) -> None:
    with pytest.raises(InvalidStalenessError, match="staleness tau must be an integer >= 0"):
        functions.create("polynomial")(tau)  # type: ignore[arg-type,unused-ignore]
    assert issubclass(InvalidStalenessError, StamenError)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("hing", {}, "unknown staleness function 'hing'; available: constant, exponential"),
        ("hinge", {"c": 1}, r"unknown parameter\(s\) \['c'\]; allowed: a, b"),
        ("fedbuff", {"a": 1}, "allowed: none"),
        ("polynomial", {"a": -0.1}, "a must be >= 0"),
        ("polynomial", {"a": "0.5"}, "a must be a number"),
        ("hinge", {"b": math.inf}, "b must be >= 0"),
        ("exponential", {"base": 1.0}, "base must be > 1"),
        ("exponential", {"scale": 0}, "scale must be > 0"),
        ("exponential", {"base": True}, "base must be a number"),
    ],
)
def test_registry_rejects_unknown_names_and_bad_params(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        functions.create(name, **params)


def test_registry_rejects_duplicates_and_reports_params() -> None:
    with pytest.raises(ValueError, match="already registered"):
        functions.register("hinge")(type("X", (), {}))
    assert functions.params_of(functions.create("hinge", a=2, b=1)) == {"a": 2.0, "b": 1.0}
