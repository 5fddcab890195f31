"""Aggregate a round's replies in one call, outside any transport (tests, benchmarks, tools).

The same collector and round close the driver runs: ``aggregate_replies(base, replies, rule)`` decodes,
validates and aggregates, and returns the new weights (None when nothing was accepted) and the stats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stamen.protocols import model_hash
from stamen.server.aggregators.base import Rule
from stamen.server.driver.collect import CollectedUpdates, CollectPolicy, RoundStats, UpdateCollector
from stamen.server.driver.driver import AggregateMode, RoundHooks
from stamen.server.driver.types import Reply, TrainTask, Weights
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec


def collect_replies(
    base: Mapping[str, np.ndarray],
    replies: Sequence[Reply],
    policy: CollectPolicy | None = None,
    version: int = 1,
) -> CollectedUpdates:
    """Collect ``replies`` as if their clients had been asked (in this order) for round ``version``."""
    weights = {k: np.asarray(v, np.float32) for k, v in base.items()}
    instr = RoundInstructions(version, version, 0, "dense", False, TaskSpec(), TrainSpec())
    digest = model_hash(weights)
    tasks = [TrainTask(r.client, instr, weights, None, digest) for r in replies]
    collector = UpdateCollector(weights, tasks, policy or CollectPolicy())
    for reply in replies:
        collector.add(reply)
    return collector.finish()


def aggregate_replies(
    base: Mapping[str, np.ndarray],
    replies: Sequence[Reply],
    rule: Rule,
    server_lr: float = 1.0,
    policy: CollectPolicy | None = None,
    hooks: RoundHooks | None = None,
    version: int = 1,
) -> tuple[Weights | None, RoundStats]:
    """Collect ``replies`` and close the round with ``rule``: ``(new weights or None, stats)``."""
    updates = collect_replies(base, replies, policy, version)
    return AggregateMode(rule, server_lr, hooks).close(version, updates), updates.stats
