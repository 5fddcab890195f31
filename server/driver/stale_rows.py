"""Stale rows in a synchronous round: clients the simulation delays train from an older version.

Each row whose task named version ``v < round`` is treated by the run's staleness rules (the
compensation policy; dropped past ``max_staleness`` under ``drop``), in place, before the rule
aggregates; its staleness ``tau = round - v`` is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stamen.server.driver.collect import CollectedUpdates, flatten, unflatten
from stamen.server.driver.types import TrainTask, client_index
from stamen.server.staleness.compensation import ModelVersions
from stamen.server.staleness.handling import StaleHandling, TooStale
from stamen.server.staleness.history import ModelHistory


def treat_stale_rows(
    rnd: int,
    updates: CollectedUpdates,
    tasks: Sequence[TrainTask],
    stale: StaleHandling,
    history: ModelHistory,
) -> None:
    """Compensate (or drop) the stale rows of ``updates`` in place and fill ``updates.taus``."""
    sent = {t.client: t.instructions.version for t in tasks}
    updates.taus = [rnd - sent[c] for c in updates.senders]
    if not any(updates.taus):
        return
    current = history.get(rnd)
    keep = []
    for i, (client, tau) in enumerate(zip(updates.senders, updates.taus, strict=True)):
        if tau == 0:
            keep.append(i)
            continue
        versions = ModelVersions(current, history.get(rnd - tau), rnd)
        delta = unflatten(updates.stack[i], updates.table)
        try:
            treated, factor = stale.treat(delta, tau, versions, client_index(client))
        except TooStale as exc:
            updates.stats.rejected += 1
            updates.stats.accepted -= 1
            updates.stats.reasons.append(f"{client}: {exc}")
            updates.stats.kinds.append("stale")
            continue
        flatten(treated, updates.table, updates.stack[i])
        updates.weights[i] *= factor
        keep.append(i)
    if len(keep) < len(updates.senders):
        _compact(updates, keep)


def _compact(updates: CollectedUpdates, keep: list[int]) -> None:
    updates.stack = updates.stack[keep]
    updates.weights = np.asarray(updates.weights)[keep]
    updates.senders = [updates.senders[i] for i in keep]
    updates.taus = [updates.taus[i] for i in keep]
