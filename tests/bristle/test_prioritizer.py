"""Bristle's prioritizer (code version 43492302): the closest peers plus random exploration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.task.bristle.prioritizer import distances, prioritize

OWN = np.zeros((1, 2), np.float32)
PEERS = np.array([[[3, 4]], [[1, 0]], [[0, 2]], [[6, 8]], [[0, 0.5]]], np.float32)  # distance 5, 1, 2, 10, .5


def test_distances_and_closest_by_hand() -> None:
    np.testing.assert_allclose(distances(OWN, PEERS), [5, 1, 2, 10, 0.5])
    rng = np.random.default_rng(0)
    assert prioritize(OWN, PEERS, rng, num_closest=2, num_random=0).tolist() == [1, 4]
    assert prioritize(OWN, PEERS, rng, num_closest=20, num_random=5).tolist() == [0, 1, 2, 3, 4]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 30), st.integers(0, 6), st.integers(0, 6), st.integers(0, 2**32 - 1))
def test_selection_property(p: int, closest: int, explore: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    own = rng.normal(size=(3, 2))
    peers = rng.normal(size=(p, 3, 2))
    chosen = prioritize(own, peers, np.random.default_rng(seed), closest, explore)
    assert len(chosen) == min(p, closest + explore) and len(set(chosen.tolist())) == len(chosen)
    assert np.all(np.diff(chosen) > 0)
    d = distances(own, peers)
    nearest = np.argsort(d, kind="stable")[:closest]
    assert set(nearest.tolist()) <= set(chosen.tolist())
    again = prioritize(own, peers, np.random.default_rng(seed), closest, explore)
    np.testing.assert_array_equal(chosen, again)


def test_pinned_exploration_draw() -> None:
    rng = np.random.default_rng(3)
    peers = rng.normal(size=(30, 2, 2))
    chosen = prioritize(np.zeros((2, 2)), peers, np.random.default_rng(5), num_closest=3, num_random=2)
    assert chosen.tolist() == PINNED


PINNED = [4, 12, 16, 25, 26]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_closest"):
        prioritize(OWN, PEERS, np.random.default_rng(0), num_closest=-1)
    with pytest.raises(ValueError, match="peers"):
        prioritize(OWN, PEERS[:, 0], np.random.default_rng(0))
