"""Declared partition sizes as a lazy mapping: equal to the dict it replaces, no per-client strings."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.client_sizes import DeclaredSizes


def test_by_hand() -> None:
    view = DeclaredSizes(np.array([3, 5]))
    assert view["client-1"] == 5 and view.get("client-0") == 3
    assert len(view) == 2 and list(view) == ["client-0", "client-1"]
    for absent in ("client-2", "client-01", "client--1", "client-", "node-0", "client-1x", 1):
        assert view.get(absent) is None  # type: ignore[call-overload]
        assert absent not in view


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 10**6), max_size=50))
def test_equals_the_dict(sizes: list[int]) -> None:
    view = DeclaredSizes(np.array(sizes, dtype=np.int64))
    assert dict(view) == {f"client-{pid}": n for pid, n in enumerate(sizes)}


def test_memory_is_the_sizes_array() -> None:
    view = DeclaredSizes(np.full(100_000, 40))
    assert view._sizes.nbytes == 800_000  # 8 bytes per client, nothing else stored
    assert view["client-99999"] == 40
