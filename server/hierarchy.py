"""Build and check the run's hierarchy from ``[aggregation.hierarchy]`` (see ``docs/hierarchy.md``).

The root is the run's ``aggregation.rule`` with ``aggregation.params``; the edge is
``aggregation.hierarchy.edge_rule`` with the hierarchy table's other keys. Both must be stateless
rules that need no model layout (their state would otherwise be per region and outside the
checkpoint). Refused before round 1, one line each: asynchronous modes (no round cohort to split),
central DP (the composition declares no sensitivity), pre-aggregators, ``groups`` above the cohort,
and a rule whose size precondition fails on a balanced region (``floor(per_round / groups)`` rows)
or on ``groups`` region updates at the root.
"""

from __future__ import annotations

import logging
from dataclasses import fields

import numpy as np

from stamen.server.aggregators import build_aggregator, create, rule_factory
from stamen.server.aggregators.base import Rule
from stamen.server.aggregators.compose import accepted_params, refuse_unaccepted
from stamen.server.aggregators.hierarchy import HierarchyRule
from stamen.server.aggregators.hierarchy_groups import region_function
from stamen.server.aggregators.hierarchy_link import Link
from stamen.task.settings import Settings
from stamen.task.settings_hierarchy import HierarchyConfig

log = logging.getLogger("stamen.server")

HIERARCHY_RULES = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "geomed")
"""Stateless, layout-free rules a hierarchy may use at either level."""


def hierarchical(s: Settings) -> bool:
    """The run aggregates in two levels (``aggregation.hierarchy.mode = "regions"``)."""
    return s.aggregation.hierarchy.mode == "regions"


def build_hierarchy(s: Settings) -> HierarchyRule:
    """The run's :class:`HierarchyRule` (``ValueError`` naming a bad rule, parameter or codec)."""
    h, a = s.aggregation.hierarchy, s.aggregation
    for key, rule in (("aggregation.hierarchy.edge_rule", h.edge_rule), ("aggregation.rule", a.rule)):
        if rule not in HIERARCHY_RULES:
            raise ValueError(
                f"{key}={rule!r} cannot be used in a hierarchy; use one of {', '.join(HIERARCHY_RULES)}"
            )
    accepted = accepted_params(rule_factory(h.edge_rule)) or set()  # a hierarchy rule names its own
    refuse_unaccepted(
        "aggregation.hierarchy", set(h.params) - accepted, f"edge_rule {h.edge_rule!r}", accepted
    )
    edge = create(h.edge_rule, **dict(h.params))
    # at the root, ``mean`` is the mean over clients: the regions' means weighted by their counts
    root = build_aggregator("fedavg" if a.rule == "mean" else a.rule, (), a.params, seed=s.seed)
    link = Link(h.codec, h.link_bandwidth, h.link_latency_s)
    region_of = region_function(h.assign, h.groups, s.data.num_clients)
    mean = {"fedavg": "weighted", "mean": "unweighted"}.get(h.edge_rule)  # one matrix product
    return HierarchyRule(edge, root, region_of, link, a.rule == "mean", s.seed, edge_mean=mean)


def unused_hierarchy_keys(s: Settings) -> list[str]:
    """The ``[aggregation.hierarchy]`` keys set away from their defaults in a flat run (ignored)."""
    h, default = s.aggregation.hierarchy, HierarchyConfig(mode="regions")
    changed = [f.name for f in fields(h) if f.name not in ("mode", "params")]
    return [k for k in changed if getattr(h, k) != getattr(default, k)] + list(h.params)


def warn_flat_hierarchy(s: Settings) -> None:
    """One warning when a flat run sets hierarchy keys (allowed: comparing a two-level scenario with
    ``--set aggregation.hierarchy.mode=flat`` keeps its other keys)."""
    unused = unused_hierarchy_keys(s)
    if not hierarchical(s) and unused:
        keys = ", ".join(f"aggregation.hierarchy.{k}" for k in unused)
        log.warning("%s: ignored while aggregation.hierarchy.mode='flat' (one level)", keys)


def check_hierarchy(s: Settings) -> None:
    """``ValueError`` (one line naming the settings) for a hierarchy the server cannot run."""
    h = s.aggregation.hierarchy
    if s.server.mode != "sync":
        raise ValueError(f"aggregation.hierarchy needs server.mode='sync', got {s.server.mode!r}")
    if s.privacy.mode == "central":
        raise ValueError(
            "aggregation.hierarchy does not support privacy.mode='central' (no declared sensitivity)"
        )
    if s.aggregation.pre:
        raise ValueError(f"aggregation.hierarchy does not support aggregation.pre={list(s.aggregation.pre)}")
    if h.groups > s.clients.per_round:
        raise ValueError(
            f"aggregation.hierarchy.groups={h.groups} exceeds clients.per_round={s.clients.per_round}"
        )
    rule = build_hierarchy(s)
    balanced = s.clients.per_round // h.groups
    _precondition(rule.edge, balanced, f"edge_rule {h.edge_rule!r} on a region of {balanced} updates")
    _precondition(
        rule.root, h.groups, f"aggregation.rule {s.aggregation.rule!r} on {h.groups} region updates"
    )


def _precondition(rule: Rule, n: int, what: str) -> None:
    rows = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    try:
        rule(rows, np.ones(n))
    except ValueError as exc:
        raise ValueError(f"aggregation.hierarchy: {what}: {exc}") from exc
