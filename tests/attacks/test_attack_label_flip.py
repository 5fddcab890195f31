"""Test trio for the ``label_flip`` data attack."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.simulations.attacks import create_data_attack


def test_label_flip_hand_computed() -> None:
    x = np.arange(6.0).reshape(3, 2)
    y = np.array([0, 1, 9])
    x2, y2 = create_data_attack("label_flip")(x, y, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(y2, [9, 8, 0])
    assert x2 is x and y.tolist() == [0, 1, 9]  # features untouched, labels not modified in place
    _, y3 = create_data_attack("label_flip", source=3, target=8)(
        x, np.array([3, 1, 3]), 10, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(y3, [8, 1, 8])


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 20), st.data())
def test_all_class_flip_is_an_involution(classes: int, data: st.DataObject) -> None:
    y = data.draw(arrays(np.int64, st.integers(0, 50), elements=st.integers(0, classes - 1)))
    attack = create_data_attack("label_flip")
    _, once = attack(np.zeros((len(y), 1)), y, classes, np.random.default_rng(0))
    _, twice = attack(np.zeros((len(y), 1)), once, classes, np.random.default_rng(0))
    np.testing.assert_array_equal(twice, y)
    assert np.all(once != y) or classes % 2 == 1  # only the middle class of an odd C is fixed


def test_label_flip_errors() -> None:
    with pytest.raises(ValueError, match="both source and target"):
        create_data_attack("label_flip", source=1)
    with pytest.raises(ValueError, match="source must be a class index"):
        create_data_attack("label_flip", source=-1, target=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        create_data_attack("label_flip")(np.zeros((1, 1)), np.array([10]), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside the 10 classes"):
        create_data_attack("label_flip", source=1, target=12)(
            np.zeros((1, 1)), np.array([1]), 10, np.random.default_rng(0)
        )


def test_label_flip_pinned() -> None:
    y = np.random.default_rng(7).integers(0, 10, 8)
    _, flipped = create_data_attack("label_flip")(np.zeros((8, 1)), y, 10, np.random.default_rng(0))
    assert y.tolist() == [9, 6, 6, 8, 5, 7, 8, 2] and flipped.tolist() == [0, 3, 3, 1, 4, 2, 1, 7]
