"""The run's aggregation rule: pre-aggregators, the rule, and central DP as a wrapper around it."""

from __future__ import annotations

from stamen.server.aggregators import Rule, build_aggregator
from stamen.server.hierarchy import build_hierarchy, hierarchical
from stamen.server.privacy.central import CentralDP, CentralDPRule
from stamen.task.seeds import dp_seed
from stamen.task.settings import Settings


def rule_name(s: Settings) -> str:
    """``"pre -> ... -> rule"`` for messages."""
    return " -> ".join([*s.aggregation.pre, s.aggregation.rule])


def build_rule(s: Settings) -> Rule:
    """The run's rule (built once: some rules keep state across rounds), wrapped in central DP for
    ``privacy.mode = "central"`` (which refuses a rule without a declared sensitivity)."""
    if hierarchical(s):
        agg: Rule = build_hierarchy(s)
    else:
        agg = build_aggregator(s.aggregation.rule, s.aggregation.pre, s.aggregation.params, seed=s.seed)
    if s.privacy.mode != "central":
        return agg
    budget = s.privacy.target_epsilon if s.privacy.calibration == "target_epsilon" else None
    return CentralDPRule(agg, make_central_dp(s), rule_name(s), budget)


def make_central_dp(s: Settings) -> CentralDP:
    """Central DP's mechanism and accountant, noise calibrated before round 1."""
    p = s.privacy
    if s.server.mode == "fedbuff" and s.server.buffer_size > s.data.num_clients:  # name the key
        raise ValueError(
            f"privacy.mode='central' under server.mode='fedbuff' releases buffers of distinct clients: "
            f"server.buffer_size={s.server.buffer_size} exceeds data.num_clients={s.data.num_clients}"
        )
    common = dict(
        clipping_norm=p.clipping_norm,
        # one release per round, or per FedBuff buffer of buffer_size updates
        clients_per_round=s.server.buffer_size if s.server.mode == "fedbuff" else s.clients.per_round,
        num_clients=s.data.num_clients,
        rounds=s.rounds,
        seed=dp_seed(p.noise, s.seed),  # OS entropy unless privacy.noise = "seeded"
        accountant=p.accountant,
    )
    if p.calibration == "target_epsilon":
        return CentralDP.from_target(p.target_epsilon, p.delta, **common)
    return CentralDP(p.noise_multiplier, delta=p.delta, **common)
