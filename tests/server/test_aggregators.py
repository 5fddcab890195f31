"""Test trio for the mean / fedavg aggregators and the registry contract."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.server.aggregators import available, create


def test_fedavg_hand_computed() -> None:
    updates = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    # weights 1 and 3: (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5.0]
    out = create("fedavg")(updates, np.array([1.0, 3.0]))
    np.testing.assert_array_equal(out, np.array([2.5, 5.0], dtype=np.float32))
    assert out.dtype == np.float32


def test_mean_ignores_weights() -> None:
    updates = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    np.testing.assert_array_equal(create("mean")(updates, np.array([1.0, 3.0])), [2.0, 4.0])


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float32, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=st.floats(-100, 100, width=32)
    ),
    st.data(),
)
def test_fedavg_matches_slow_reference(updates: np.ndarray, data: st.DataObject) -> None:
    n = updates.shape[0]
    w = np.array(data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n)), dtype=np.float64)
    expected = sum(w[i] * updates[i].astype(np.float64) for i in range(n)) / w.sum()
    np.testing.assert_allclose(create("fedavg")(updates, w), expected, rtol=1e-5, atol=1e-3)


def test_fedavg_pinned_value() -> None:
    rng = np.random.default_rng(7)
    updates = rng.standard_normal((5, 4)).astype(np.float32)
    out = create("fedavg")(updates, np.arange(1, 6, dtype=np.float64))
    np.testing.assert_allclose(out, [-0.5789, -0.6371, -0.5538, -0.0537], atol=1e-4)


def test_registry_errors_name_the_problem() -> None:
    assert {"fedavg", "mean"} <= set(available())
    with pytest.raises(ValueError, match="unknown aggregation rule 'nope'"):
        create("nope")
    with pytest.raises(ValueError, match="invalid parameters for aggregation rule 'fedavg'"):
        create("fedavg", beta=0.1)


@pytest.mark.parametrize(
    ("updates", "weights", "match"),
    [
        (np.zeros((0, 3), np.float32), None, "non-empty"),
        (np.zeros((2, 3), np.float32), np.array([1.0]), "shape"),
        (np.zeros((2, 3), np.float32), np.array([-1.0, 2.0]), "non-negative"),
    ],
)
def test_bad_input(updates: np.ndarray, weights: np.ndarray | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create("fedavg")(updates, weights)
