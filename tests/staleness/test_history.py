"""Test trio for the bounded model-version history and its typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import StamenError, ValidationError
from stamen.server.staleness import (
    FutureVersionError,
    InvalidVersionError,
    ModelHistory,
    StalenessError,
    UnknownVersionError,
)


def _weights(v: float, n: int = 4) -> dict[str, np.ndarray]:
    return {"w": np.full(n, v, np.float32)}  # 4 floats = 16 bytes


def test_hand_computed_window() -> None:
    h = ModelHistory(max_versions=3)
    for v in range(6):
        h.put(v, _weights(v))
    assert h.versions() == [3, 4, 5] and h.latest == 5 and h.nbytes == 48 and len(h) == 3
    np.testing.assert_array_equal(h.get(4)["w"], [4, 4, 4, 4])
    assert h.staleness(3) == 2 and h.staleness(0) == 5  # tau is defined for evicted versions too
    with pytest.raises(
        UnknownVersionError, match=r"model version 2 is no longer held: the history keeps versions 3..5"
    ):
        h.get(2)
    with pytest.raises(
        FutureVersionError, match="model version 6 is from the future: the newest released version is 5"
    ):
        h.get(6)
    with pytest.raises(FutureVersionError):
        h.staleness(9)
    assert h.memory_report() == {
        "versions": 3, "bytes": 48, "max_versions": 3, "max_bytes": None, "oldest": 3, "latest": 5,
    }  # fmt: skip


def test_byte_bound_keeps_the_newest_even_when_too_big() -> None:
    h = ModelHistory(max_bytes=40)
    h.put(0, _weights(0))
    h.put(1, _weights(1))
    assert h.versions() == [0, 1] and h.nbytes == 32
    h.put(2, _weights(2))
    assert h.versions() == [1, 2]
    h.put(3, _weights(3, n=100))  # 400 bytes alone: kept, everything older evicted
    assert h.versions() == [3] and h.nbytes == 400


def test_gaps_unreleased_versions_and_empty_history() -> None:
    h = ModelHistory.for_max_staleness(10)
    assert h.max_versions == 11
    with pytest.raises(UnknownVersionError, match="no model version has been released yet"):
        h.get(0)
    h.put(2, _weights(2))
    h.put(5, _weights(5))
    with pytest.raises(UnknownVersionError, match="model version 3 was never released"):
        h.get(3)
    with pytest.raises(ValueError, match="model version 5 is not newer than the latest released version 5"):
        h.put(5, _weights(5))


@pytest.mark.parametrize("bad", [-1, 1.0, True, "3", None])
def test_invalid_versions_are_typed_errors(bad: object) -> None:
    h = ModelHistory(max_versions=2)
    h.put(0, _weights(0))
    with pytest.raises(InvalidVersionError, match="model version must be an integer >= 0"):
        h.get(bad)
    assert issubclass(StalenessError, ValidationError) and issubclass(StalenessError, StamenError)
    assert issubclass(FutureVersionError, StalenessError) and issubclass(UnknownVersionError, StalenessError)


def test_stored_weights_are_read_only_copies() -> None:
    h = ModelHistory(max_versions=2)
    src = _weights(1.0)
    h.put(0, src)
    src["w"][:] = 9
    stored = h.get(0)
    np.testing.assert_array_equal(stored["w"], [1, 1, 1, 1])
    with pytest.raises(ValueError):
        stored["w"][0] = 5
    with pytest.raises(TypeError):
        stored["x"] = np.zeros(1)  # type: ignore[index,unused-ignore]


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="needs max_versions and/or max_bytes"):
        ModelHistory()
    with pytest.raises(ValueError, match="max_versions must be an integer >= 1"):
        ModelHistory(max_versions=0)
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 1"):
        ModelHistory(max_bytes=1.5)  # type: ignore[arg-type,unused-ignore]


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30),
    max_versions=st.none() | st.integers(1, 8),
    max_bytes=st.none() | st.integers(4, 600),
)
def test_invariants_under_random_releases(
    sizes: list[int], max_versions: int | None, max_bytes: int | None
) -> None:
    if max_versions is None and max_bytes is None:
        max_versions = 3
    h = ModelHistory(max_versions=max_versions, max_bytes=max_bytes)
    for v, n in enumerate(sizes):
        h.put(v, _weights(v, n))
        held = h.versions()
        assert held == list(range(held[0], v + 1))  # a contiguous suffix ending at the newest
        assert h.nbytes == sum(h.get(u)["w"].nbytes for u in held)
        assert max_versions is None or len(held) <= max_versions
        assert max_bytes is None or h.nbytes <= max_bytes or len(held) == 1
        if held[0] > 0:
            with pytest.raises(UnknownVersionError):
                h.get(held[0] - 1)
