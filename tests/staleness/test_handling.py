"""The run's staleness rules: the configured s(tau) in ``weighted``, applied once, and which
policies need the stale base version."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import tensor_table
from stamen.server.driver.collect import CollectedUpdates, RoundStats
from stamen.server.driver.stale_rows import treat_stale_rows
from stamen.server.driver.types import TrainTask
from stamen.server.staleness import compensation, functions
from stamen.server.staleness.compensation import ModelVersions
from stamen.server.staleness.handling import StaleHandling, TooStale
from stamen.server.staleness.history import ModelHistory
from stamen.task.settings import ServerModeConfig
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

ONES = {"w": np.ones(2, np.float32)}


def _handling(**kw: object) -> StaleHandling:
    return StaleHandling.from_settings(ServerModeConfig(**kw), lambda: compensation.create("direct"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fn", "params", "expected"),
    [("fedbuff", {}, 1 / np.sqrt(11)), ("hinge", {}, 1 / 61), ("polynomial", {"a": 1.0}, 1 / 11)],
)
def test_weighted_compensation_scales_by_the_configured_staleness_function(
    fn: str, params: dict[str, float], expected: float
) -> None:
    """tau = 10: s(10) of server.staleness, not the policy's default 2^(-10/20) = 0.7071."""
    h = _handling(mode="fedbuff", staleness=fn, params=params, compensation="weighted")
    out, factor = h.treat(ONES, 10, ModelVersions(ONES, ONES, 10), 0)
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    assert factor == 1.0


def test_weighted_in_a_sync_round_uses_the_configured_function() -> None:
    """A synchronous round with one row 4 versions stale: treat_stale_rows scales it by
    fedbuff's s(4) = 1/sqrt(5) (was 2^(-4/20) = 0.8706); the fresh row is untouched."""
    h = _handling(staleness="fedbuff", compensation="weighted")
    history = ModelHistory(max_versions=8)
    for v in range(1, 6):
        history.put(v, ONES)
    spec = lambda v: RoundInstructions(5, v, 0, "dense", False, TaskSpec(), TrainSpec())  # noqa: E731
    tasks = [TrainTask("c-1", spec(5), None, None, ""), TrainTask("c-2", spec(1), None, None, "")]
    updates = CollectedUpdates(
        ONES,
        tensor_table(ONES),
        np.full((2, 2), 2.0, np.float32),
        np.ones(2),
        ["c-1", "c-2"],
        {},
        RoundStats(),
    )
    treat_stale_rows(5, updates, tasks, h, history)
    np.testing.assert_allclose(updates.stack, [[2.0, 2.0], [2 / np.sqrt(5)] * 2], rtol=1e-6)
    assert updates.taus == [0, 4] and list(updates.weights) == [1.0, 1.0]


def test_async_factor_applies_s_once() -> None:
    """direct: the async factor is s(tau); weighted (which already scaled the delta): 1; downweight
    past max_staleness = 2: (2 / tau) s(tau)."""
    s = functions.create("fedbuff")
    assert _handling(compensation="direct").async_factor(3) == pytest.approx(s(3))
    assert _handling(compensation="weighted").async_factor(3) == 1.0
    down = _handling(max_staleness=2, stale_policy="downweight", compensation="weighted")
    assert down.async_factor(2) == 1.0  # within the bound: weighted applied s(2)
    assert down.async_factor(8) == pytest.approx(0.25 * s(8))  # past it: the delta is not weighted


def test_what_each_rule_needs_from_the_history() -> None:
    """Only drop caps tau (S + 1 versions); downweight needs tau only, dcasgd the stale base."""
    drop = _handling(max_staleness=2)
    assert drop.history_versions() == 3
    with pytest.raises(TooStale, match=r"staleness 3 exceeds server\.max_staleness=2"):
        drop.needs_base(3)
    down = _handling(max_staleness=2, stale_policy="downweight", compensation="dcasgd")
    assert down.history_versions() is None
    assert down.needs_base(2) and not down.needs_base(3) and not down.needs_base(0)
    convert = _handling(max_staleness=2, stale_policy="convert", compensation="dcasgd")
    assert convert.history_versions() is None and convert.needs_base(3) and not convert.needs_base(2)
    assert _handling().history_versions() is None  # no bound: the byte-bounded history
