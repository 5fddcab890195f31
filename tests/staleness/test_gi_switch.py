"""Test trio for the GI switch-back rule and the oracle reference test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.staleness.gi_switch import SwitchBack, oracle_errors, oracle_switch_test


def test_oracle_hand_computed() -> None:
    true = {"w": np.array([1.0, 2.0]), "b": np.array([0.0])}
    conv = {"w": np.array([1.5, 2.0]), "b": np.array([-0.5])}  # e_gi = 0.5 + 0.5 = 1.0
    stale = {"w": np.array([0.0, 2.0]), "b": np.array([0.2])}  # e_stale = 1.0 + 0.2 = 1.2
    assert oracle_errors(true, conv, stale) == pytest.approx((1.0, 1.2))
    assert not oracle_switch_test(true, conv, stale)  # 1.2 < 0.9 * 1.0 is false: keep converting
    assert oracle_switch_test(true, stale, conv, margin=0.9)  # roles swapped: 1.0 < 0.9 * 1.2


def test_switch_hand_computed_sequence() -> None:
    rule = SwitchBack(margin=0.9, patience=2)
    assert not rule.observe(10, 3, residual_l1=1.0, shift_l1=2.0)  # correction larger than error
    assert not rule.observe(11, 3, residual_l1=1.0, shift_l1=0.5)  # streak 1
    assert not rule.observe(12, 3, residual_l1=1.0, shift_l1=0.95)  # 0.95 >= 0.9: streak reset
    assert not rule.observe(13, 3, residual_l1=1.0, shift_l1=0.5)  # streak 1
    assert rule.observe(14, 3, residual_l1=1.0, shift_l1=0.5)  # streak 2: switch at 14 + tau
    assert rule.switch_at == 17
    assert rule.converting(16) and not rule.converting(17) and not rule.converting(30)
    assert not rule.observe(15, 3, residual_l1=1.0, shift_l1=9.0)  # ignored after the switch
    assert rule.switch_at == 17


def test_lag_and_max_version() -> None:
    rule = SwitchBack(lag=0, max_version=100)
    assert rule.converting(99) and not rule.converting(100)
    assert rule.observe(5, 40, residual_l1=2.0, shift_l1=1.0)
    assert rule.switch_at == 5 and not rule.converting(5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), max_size=40), st.integers(1, 4))
def test_switch_fires_exactly_after_patience_passes_in_a_row(
    obs: list[tuple[float, float]], patience: int
) -> None:
    rule = SwitchBack(patience=patience, lag=0)
    streak, expected = 0, None
    for v, (res, shift) in enumerate(obs):
        fired = rule.observe(v, 1, res, shift)
        if expected is None:
            streak = streak + 1 if shift < 0.9 * res else 0
            if streak >= patience:
                expected = v
        assert fired == (expected == v)
    assert rule.switch_at == expected


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="margin must be a number > 0"):
        SwitchBack(margin=0)
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        SwitchBack(patience=0)
    with pytest.raises(ValueError, match="errors must be finite and >= 0"):
        SwitchBack().observe(1, 1, float("nan"), 0.0)
