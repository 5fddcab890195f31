"""Hierarchical (two-level) aggregation: regions pre-aggregate, the root aggregates the regions.

LIFL (Qi et al., "LIFL: A Lightweight, Event-driven Serverless Platform for Federated Learning",
MLSys 2024) and hierarchical FL (Liu et al., "Client-Edge-Cloud Hierarchical Federated Learning",
ICC 2020) place intermediate aggregators between clients and the root. Here one round is::

    rows of region g  --edge_rule-->  u_g (d,)  --forward (codec)-->  root_rule({u_g}, {W_g})

with region weights ``W_g = sum of the FedAvg weights of the region's rows`` (``c_g`` = its row
count when the root rule is ``mean``). For linear rules this is exact:
``sum_g W_g (sum_{i in g} w_i x_i / W_g) / sum_g W_g = sum_i w_i x_i / sum_i w_i`` (fedavg -> fedavg),
and likewise with unit weights (mean -> mean). Robust rules compose per level; what breakdown point
the composition keeps is in ``docs/hierarchy.md``.

A region whose edge rule refuses its size (e.g. Krum's ``2f + 2 < n`` on a small region) forwards
nothing that round (logged, and missing from ``hier_regions``); the root then aggregates the
other regions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from stamen.server.aggregators.base import RoundContext, Rule, RuleTraits, check_stack
from stamen.server.aggregators.hierarchy_groups import RegionOf, partition_rows
from stamen.server.aggregators.hierarchy_link import Link, forward

log = logging.getLogger("stamen.server")
Parts = list[tuple[int, np.ndarray]]  # (region, row indices) of the non-empty regions


@dataclass(frozen=True)
class Forwarded:
    """What the intermediates sent the root in one round: ``(k, d)`` decoded updates, the regions'
    ids, row counts ``c_g`` and summed weights ``W_g``, envelope bytes, slowest trips (s, NaN
    without a timing model), and the regions that forwarded nothing."""

    updates: np.ndarray
    regions: tuple[int, ...]
    counts: np.ndarray
    totals: np.ndarray
    nbytes: int
    slowest_s: tuple[float, ...]
    dropped: int


class HierarchyRule(Rule):
    """Two-level aggregation as one :class:`Rule` (see the module docstring).

    Parameters
    ----------
    edge : Rule
        The rule each region applies to its rows (one stateless instance shared by all regions).
    root : Rule
        The rule over the regions' updates.
    region_of : callable
        ``client key -> region`` (:func:`~stamen.server.aggregators.hierarchy_groups.region_function`).
    link : Link
        Forward codec and the root's ingress model.
    root_by_count : bool, default False
        Weight the regions by their row counts (the root rule is ``mean``) instead of summed weights.
    seed : int, default 0
        Seeds the forward codec per round and region.
    edge_mean : {None, "weighted", "unweighted"}, default None
        The edge rule is ``fedavg`` (``"weighted"``) or ``mean`` (``"unweighted"``): all regions'
        means are then computed in one matrix product (same result, no per-region row gather).
    """

    def __init__(
        self,
        edge: Rule,
        root: Rule,
        region_of: RegionOf,
        link: Link,
        root_by_count: bool = False,
        seed: int = 0,
        edge_mean: str | None = None,
    ) -> None:
        if edge_mean not in (None, "weighted", "unweighted"):
            raise ValueError(
                f"hierarchy: edge_mean must be None, 'weighted' or 'unweighted', got {edge_mean!r}"
            )
        self.edge, self.root, self.region_of, self.link = edge, root, region_of, link
        self.root_by_count, self.seed, self.edge_mean = root_by_count, seed, edge_mean
        self.traits = RuleTraits(required_server_lr=root.traits.required_server_lr)
        self.ctx: RoundContext | None = None
        self.last: Forwarded | None = None

    def begin_round(self, ctx: RoundContext) -> None:
        """Keep the round's senders and trips; hand the context to both levels."""
        self.ctx = ctx
        self.edge.begin_round(ctx)
        self.root.begin_round(ctx)

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Edge rule per region, forward, root rule; ``(d,)`` float32."""
        w = check_stack(updates, weights)
        w = np.ones(updates.shape[0]) if w is None else w
        ctx = self.ctx
        if ctx is None or len(ctx.senders) != updates.shape[0]:
            got = 0 if ctx is None else len(ctx.senders)
            raise ValueError(f"hierarchy: needs the sender of each of the {updates.shape[0]} rows, got {got}")
        self.last = self.edge_level(updates, w, ctx)
        root_w = self.last.counts if self.root_by_count else self.last.totals
        return np.asarray(self.root(self.last.updates, root_w), dtype=np.float32)

    def edge_level(self, updates: np.ndarray, w: np.ndarray, ctx: RoundContext) -> Forwarded:
        """Every region's edge aggregate, as the root receives it."""
        parts = partition_rows(ctx.senders, self.region_of)
        aggs = self.linear_edge(updates, w, parts) if self.edge_mean else self.each_edge(updates, w, parts)
        rows, regions, counts, totals, slowest, nbytes = [], [], [], [], [], 0
        trips = np.asarray(ctx.trip_s if ctx.trip_s else [math.nan] * len(w), dtype=np.float64)
        for (g, idx), agg in zip(parts, aggs, strict=True):
            if agg is None:
                continue
            seed = int(np.random.SeedSequence([self.seed, ctx.round, g]).generate_state(1)[0])
            got, size = forward(agg, ctx.table, self.link, f"region-{g}", ctx.round, seed)
            rows.append(got)
            regions.append(g)
            counts.append(float(idx.size))
            totals.append(float(w[idx].sum()))
            slowest.append(float(trips[idx].max()))
            nbytes += size
        dropped = sum(agg is None for agg in aggs)
        if not rows:
            raise ValueError(f"hierarchy: no region could aggregate its updates ({dropped} refused)")
        stack = np.stack(rows)  # (k, d)
        return Forwarded(
            stack, tuple(regions), np.asarray(counts), np.asarray(totals), nbytes, tuple(slowest), dropped
        )

    def each_edge(self, updates: np.ndarray, w: np.ndarray, parts: Parts) -> list[np.ndarray | None]:
        """The edge rule on each region's rows; None for a region whose size it refuses."""
        out: list[np.ndarray | None] = []
        for g, idx in parts:
            try:
                out.append(np.asarray(self.edge(updates[idx], w[idx]), dtype=np.float32))
            except ValueError as exc:
                out.append(None)
                log.warning("hierarchy: region %d (%d updates) forwards nothing: %s", g, idx.size, exc)
        return out

    def linear_edge(self, updates: np.ndarray, w: np.ndarray, parts: Parts) -> list[np.ndarray | None]:
        """Every region's (weighted) mean in one ``(k, n) @ (n, d)`` product: the same arithmetic as
        the edge rule per region, without gathering each region's rows (``edge_mean``)."""
        share = np.zeros((len(parts), updates.shape[0]), dtype=np.float64)  # (k, n)
        for r, (_, idx) in enumerate(parts):
            v = w[idx] if self.edge_mean == "weighted" else np.ones(idx.size)
            share[r, idx] = v / v.sum()
        return list(share.astype(np.float32) @ updates)  # k rows of (d,) float32

    def round_metrics(self) -> dict[str, float]:
        """``hier_regions`` (forwarded), ``hier_regions_dropped``, ``hier_bytes_root`` (envelope
        bytes into the root), ``hier_latency_edge_s`` (slowest client of the slowest region; NaN
        without a timing model) and ``hier_latency_root_s`` (the link model of
        :mod:`~stamen.server.aggregators.hierarchy_link`)."""
        if self.last is None:
            return {}
        f = self.last
        return {
            "hier_regions": float(len(f.regions)),
            "hier_regions_dropped": float(f.dropped),
            "hier_bytes_root": float(f.nbytes),
            "hier_latency_edge_s": float(np.max(f.slowest_s)),  # NaN when any trip is unknown
            "hier_latency_root_s": self.link.seconds(f.nbytes),
        }

    def __repr__(self) -> str:
        return f"HierarchyRule(edge={self.edge!r}, root={self.root!r})"
