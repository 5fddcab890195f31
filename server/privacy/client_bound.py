"""The ε a local-DP client has at most spent, from the tasks the server sent it.

Under ``privacy.mode = "local"`` every client reports its own ε (``epsilon`` in its reply), counted
over the updates it released *in this Flower run*. A deployed run resumed from its state-dir is a new
run, so every client counts from zero again and its reports understate what it spent before the
crash. The server knows better: its round driver counts the tasks it sent each client
(:class:`~stamen.server.driver.trip_budget.TripBudget`, checkpointed, and counted before each push
in a deployment), and each task is at most one released update. A client's ε is a function of the
noise multiplier, δ and its releases only (:func:`stamen.privacy.local.local_epsilon`, the function
the clients call), so the server reports the larger of the clients' reports and the ε of the most
tasks sent to one client (:func:`task_bound`).

``dp_sgd`` has no such bound: a client's ε there also depends on its own data size n (opacus'
``q = 1 / ceil(n/B)`` and ``ceil(n/B)`` steps per epoch), which a deployed server does not know (a
private reply reports ``num-examples = 1``), so the reports are all it has; the in-process engine
checkpoints its clients' accountant histories, so a resumed simulation's reports carry on. RQM is
accounted by the server itself, central DP by the aggregation rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from stamen.privacy.local import local_epsilon
from stamen.server.config import ServerConfig

#: ``the most tasks sent to one client -> ε`` of that client, or None (no task sent)
TaskBound = Callable[[int], float | None]


def task_bound(cfg: ServerConfig) -> TaskBound | None:
    """``most -> ε`` under local DP: the ε of a client that released one update for each of the
    ``most`` tasks sent to the most-asked client (``TripBudget.most()``), computed as the clients
    compute theirs (the noise multiplier, δ and accountant of the run's training spec); None for
    every other mode. A non-finite ε (noise multiplier 0) is None, as a client's non-finite report
    is not counted."""
    if cfg.privacy.mode != "local":
        return None
    spec, cache = cfg.train, {}

    def bound(most: int) -> float | None:
        if most <= 0:
            return None
        if most not in cache:
            cache[most] = local_epsilon(spec.dp_noise_multiplier, most, spec.dp_delta, spec.dp_accountant)
        eps = cache[most]
        return eps if math.isfinite(eps) else None

    return bound
