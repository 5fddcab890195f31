"""The asynchronous modes' model steps: FedAsync's mixing and FedBuff's buffered step, as pure
functions of the current weights and what arrived since the last version (:class:`_Step`), and the
norm outliers a step drops first."""

from __future__ import annotations

import numpy as np

from stamen.protocols import TensorInfo
from stamen.server.aggregators.base import RoundContext, Rule
from stamen.server.driver.async_state import AsyncSettings, _Step
from stamen.server.driver.collect import CollectPolicy, capped_examples, flatten, norm_outliers, unflatten
from stamen.server.driver.types import Weights


def fedasync_mix(weights: Weights, step: _Step, table: tuple[TensorInfo, ...], alpha: float) -> Weights:
    """FedAsync (Xie et al.): ``w <- (1 - a) w + a w_client``, ``a = alpha * s(tau) [* extra factor]``."""
    a = np.float32(alpha * step.factors[0])
    client = unflatten(step.rows[0], table)
    return {k: (1 - a) * v + a * client[k] for k, v in weights.items()}


def fedbuff_step(
    weights: Weights,
    step: _Step,
    table: tuple[TensorInfo, ...],
    rule: Rule,
    policy: CollectPolicy,
    version: int,
    s: AsyncSettings,
    momentum: np.ndarray | None,
) -> tuple[Weights, np.ndarray | None]:
    """FedBuff (Nguyen et al. 2022, Alg. 1): each buffered update scaled by its staleness factor
    ``s(tau)``, then the rule over the buffer with the (capped) example counts as weights, so
    fedavg steps ``sum_k n_k s_k Delta_k / sum_k n_k`` and mean ``sum_k s_k Delta_k / K`` (the
    paper's step); then server lr + momentum. Returns the new weights and momentum."""
    stack = np.stack(step.rows)  # (K, d)
    stack *= np.asarray(step.factors, np.float32)[:, None]
    counts = np.asarray(capped_examples(step.counts, step.clients, policy), np.float64)
    base = np.empty(stack.shape[1], np.float32)
    flatten(weights, table, base)
    rule.begin_round(RoundContext(version + 1, table, base))
    agg = np.asarray(rule(stack, counts if counts.sum() > 0 else None), np.float32)
    delta = agg * np.float32(s.server_lr)
    if s.momentum:
        momentum = delta if momentum is None else np.float32(s.momentum) * momentum + delta
        delta = momentum
    update = unflatten(delta, table)
    return {k: v + update[k] for k, v in weights.items()}, momentum


def drop_outliers(step: _Step, policy: CollectPolicy) -> dict[str, str]:
    """Drop the updates of ``step``'s norm outliers (:func:`norm_outliers`); returns them, with why."""
    bad = norm_outliers(step.clients, step.norms, policy)
    if bad:
        keep = [i for i, c in enumerate(step.clients) if c not in bad]
        for name in ("rows", "counts", "factors", "clients", "norms", "taus"):
            values = getattr(step, name)
            setattr(step, name, [values[i] for i in keep])
    return bad
