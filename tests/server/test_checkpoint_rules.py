"""Rule state through a checkpoint (server/checkpoint_rules.py): a rule restored after round 1 gives
round 2 exactly as the rule that never stopped."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import tensor_table
from stamen.server.aggregators import build_aggregator
from stamen.server.aggregators.base import RoundContext
from stamen.server.checkpoint import Checkpoint, CheckpointError, decode_checkpoint, encode_checkpoint
from stamen.server.checkpoint_rules import Snapshot, capture_rule, restore_rule

CC = {"tau": 0.5, "iters": 1}  # one clipping step: the centre shows in the result
PARAMS = {"centered_clipping": CC}
CASES = [
    ("centered_clipping", ()),
    ("mean", ("bucketing",)),
    ("median", ()),
    ("trimmed_mean", ("bucketing",)),
    ("geomed", ()),
    ("krum", ()),
    ("centered_clipping", ("bucketing",)),
]


def _round(rule, rnd: int, stack: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    table = tensor_table({"w": np.zeros(stack.shape[1], np.float32)})
    rule.begin_round(RoundContext(rnd, table, np.zeros(stack.shape[1], np.float32)))
    return np.asarray(rule(stack, np.ones(len(stack))), np.float32)


def _through_file(snap: Snapshot, tree: dict) -> tuple[Snapshot, dict]:
    """The tree and arrays as a resumed run reads them back from disk."""
    ck = Checkpoint(1, "sync", {"w": np.zeros(1, np.float32)}, (), {}, {"rule": tree}, snap.arrays)
    back = decode_checkpoint(encode_checkpoint(ck))
    return Snapshot(dict(back.arrays)), back.state["rule"]


@pytest.mark.parametrize(("name", "pre"), CASES)
def test_restored_rule_repeats_round_two(name: str, pre: tuple[str, ...]) -> None:
    rng = np.random.default_rng(7)
    r1, r2 = (rng.normal(size=(9, 6)).astype(np.float32) for _ in range(2))
    kept = build_aggregator(name, pre, PARAMS.get(name, {}), seed=3)
    _round(kept, 1, r1)
    snap = Snapshot()
    tree = capture_rule(kept, snap)
    fresh = build_aggregator(name, pre, PARAMS.get(name, {}), seed=3)
    restore_rule(fresh, *reversed(_through_file(snap, tree)))
    np.testing.assert_array_equal(_round(fresh, 2, r2), _round(kept, 2, r2))


def test_centered_clipping_needs_its_centre() -> None:
    # without the restore, round 2 starts from another centre: the check above can fail
    rng = np.random.default_rng(1)
    r1, r2 = (rng.normal(3.0, 1.0, size=(5, 4)).astype(np.float32) for _ in range(2))
    kept = build_aggregator("centered_clipping", (), CC, seed=0)
    _round(kept, 1, r1)
    fresh = build_aggregator("centered_clipping", (), CC, seed=0)
    assert not np.array_equal(_round(fresh, 2, r2), _round(kept, 2, r2))


def test_restore_into_another_rule_is_refused() -> None:
    snap = Snapshot()
    tree = capture_rule(build_aggregator("centered_clipping", (), seed=0), snap)
    with pytest.raises(CheckpointError, match="pre-aggregator states; the run has 1"):
        restore_rule(build_aggregator("median", ("bucketing",), seed=0), tree, snap)
    with pytest.raises(CheckpointError, match="kind 'CenteredClipping'; this run's rule is 'stateless'"):
        restore_rule(build_aggregator("median", (), seed=0), tree, snap)
