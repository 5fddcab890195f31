"""Test trio for the ``rank_reversal`` attack (pool the malicious clients' rankings, reverse the
combined ranking, every malicious client submits it)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import TensorInfo
from stamen.server.aggregators.base import RoundContext
from stamen.simulations.attacks.base import OwnUpdateAttack
from stamen.simulations.attacks.rank_reversal import RankReversal, rank_reversal, reversed_combined_ranking

TABLE = (TensorInfo("l.weight", (2,), "float32"), TensorInfo("l.scores", (4,), "float32"))


def test_reversed_combined_ranking_by_hand() -> None:
    own = np.array([[0, 1, 2, 3], [1, 0, 2, 3]], np.float32)
    # positions [0,1,2,3] + [1,0,2,3] = [1,1,4,6]; descending: edge 3 (6), edge 2 (4), then 0, 1 (tie)
    assert reversed_combined_ranking(own).tolist() == [3, 2, 0, 1]


def test_attack_rows_by_hand() -> None:
    attack = rank_reversal()
    assert isinstance(attack, OwnUpdateAttack) and attack.pool_size == 25
    attack.begin_round(RoundContext(1, TABLE, np.zeros(6, np.float32)))
    own = np.zeros((2, 6), np.float32)
    own[:, 2:] = [[0, 1, 2, 3], [1, 0, 2, 3]]
    honest = np.zeros((3, 6), np.float32)
    forged = attack(honest, 3, np.random.default_rng(0), own=own)
    assert forged.shape == (3, 6) and forged.dtype == np.float32
    np.testing.assert_array_equal(forged, np.tile([0, 0, 3, 2, 0, 1], (3, 1)))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_single_ranking_is_exactly_reversed(n: int, seed: int) -> None:
    r = np.random.default_rng(seed).permutation(n)
    assert reversed_combined_ranking(r[None].astype(np.float32)).tolist() == r[::-1].tolist()


def test_pinned_value() -> None:
    rng = np.random.default_rng(7)
    own = np.stack([rng.permutation(8) for _ in range(3)]).astype(np.float32)
    assert reversed_combined_ranking(own).tolist() == PINNED


PINNED = [1, 5, 4, 6, 2, 0, 3, 7]


def test_misuse_is_a_clear_error() -> None:
    attack = RankReversal()
    with pytest.raises(ValueError, match="begin_round"):
        attack(np.zeros((1, 6), np.float32), 1, np.random.default_rng(0), own=np.zeros((1, 6), np.float32))
    attack.begin_round(RoundContext(1, TABLE, np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match="own"):
        attack(np.zeros((1, 6), np.float32), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="pool_size"):
        RankReversal(pool_size=0)
