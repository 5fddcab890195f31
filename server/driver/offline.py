"""Aggregate a round's replies in one call, outside any transport (tests, benchmarks, tools).

The same collector and round close the driver runs: ``aggregate_replies(base, replies, rule)`` decodes,
validates and aggregates, and returns the new weights (None when nothing was accepted) and the stats.
Each client counts as asked for ``codec``, or (None) for the codec its own envelope names: the caller
vouches for its replies, where a server refuses an envelope in another codec than it asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stamen.protocols import StamenError, model_hash, unpack
from stamen.server.aggregators.base import Rule
from stamen.server.driver.collect import CollectedUpdates, CollectPolicy, RoundStats, UpdateCollector
from stamen.server.driver.driver import AggregateMode, RoundHooks
from stamen.server.driver.types import Reply, TrainTask, Weights
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec


def _asked(reply: Reply, codec: str | None) -> str:
    """The codec ``reply``'s client counts as asked for: ``codec``, else its envelope's own."""
    if codec is not None:
        return codec
    try:
        return unpack(reply.envelope).codec if reply.envelope is not None else "dense"
    except StamenError:
        return "dense"  # not an envelope: the collector refuses it, naming why


def collect_replies(
    base: Mapping[str, np.ndarray],
    replies: Sequence[Reply],
    policy: CollectPolicy | None = None,
    version: int = 1,
    codec: str | None = None,
) -> CollectedUpdates:
    """Collect ``replies`` as if their clients had been asked (in this order) for round ``version``
    and ``codec`` (None: the codec each envelope names)."""
    weights = {k: np.asarray(v, np.float32) for k, v in base.items()}
    digest = model_hash(weights)

    def instr(reply: Reply) -> RoundInstructions:
        return RoundInstructions(version, version, 0, _asked(reply, codec), False, TaskSpec(), TrainSpec())

    tasks = [TrainTask(r.client, instr(r), weights, None, digest) for r in replies]
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
    codec: str | None = None,
) -> tuple[Weights | None, RoundStats]:
    """Collect ``replies`` and close the round with ``rule``: ``(new weights or None, stats)``."""
    updates = collect_replies(base, replies, policy, version, codec)
    return AggregateMode(rule, server_lr, hooks).close(version, updates), updates.stats
