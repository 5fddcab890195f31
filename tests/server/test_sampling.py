from __future__ import annotations

import pytest

from stamen.server.sampling import sample_clients


def test_sampling_is_deterministic_sorted_and_distinct() -> None:
    a = sample_clients(3, 5, 50, 10)
    assert a == sample_clients(3, 5, 50, 10)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= i < 50 for i in a)
    assert a != sample_clients(3, 6, 50, 10)  # a new round draws a new cohort


def test_full_participation_and_errors() -> None:
    assert sample_clients(0, 1, 4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="k must be"):
        sample_clients(0, 1, 4, 5)
