"""``[aggregation.hierarchy]``: two-level (hierarchical) aggregation, LIFL-style.

Clients are grouped into ``groups`` regions (edge servers, intermediate aggregators); each region
aggregates its own clients with ``edge_rule`` and forwards one update to the root, which aggregates
the regions' updates with ``aggregation.rule`` (and ``aggregation.params``). The grouping is a pure
function of the client key, so a client stays in its region across rounds
(:mod:`stamen.server.aggregators.hierarchy_groups`). See ``docs/hierarchy.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from stamen.task.settings_base import Scalar, _Config, _f

HIERARCHY_MODES: tuple[str, ...] = ("flat", "regions")
ASSIGNMENTS: tuple[str, ...] = ("modulo", "contiguous", "hash")


@dataclass(frozen=True)
class HierarchyConfig(_Config):
    """``[aggregation.hierarchy]``: regions, how clients map to them, the edge rule and the link.

    Attributes
    ----------
    mode : {"flat", "regions"}, default "flat"
        ``"flat"``: one level (every client's update goes to the root rule). ``"regions"``: two.
    groups : int, default 10
        Number of regions, ``>= 1`` and ``<= clients.per_round`` (checked at load).
    assign : {"modulo", "contiguous", "hash"}, default "modulo"
        Region of client key ``k`` with number ``i`` (``"client-i"``, ``"node-i"``): ``i mod
        groups``; ``floor(i * groups / data.num_clients)`` (blocks of neighbouring partitions; a
        simulation's keys only); or BLAKE2b-64 of the key mod ``groups`` (any key).
    edge_rule : str, default "fedavg"
        The rule each region applies to its own clients; every other key of the table is one of
        its parameters (``aggregation.hierarchy.beta = 0.1`` for ``trimmed_mean``).
    codec : str, default "dense"
        Codec spec the intermediates forward their update with (the root aggregates the decoded
        updates; ``bytes_root`` is the length of these envelopes).
    link_bandwidth : float, default 12.5e6
        Region -> root link, bytes per second (100 Mbit/s), for the simulated level-2 latency.
    link_latency_s : float, default 0.02
        Region -> root one-way latency, seconds.
    """

    SECTION: ClassVar[str] = "aggregation.hierarchy"
    EXTRAS: ClassVar[str | None] = "params"
    mode: str = _f("flat", choices=HIERARCHY_MODES)
    groups: int = _f(10, ge=1)
    assign: str = _f("modulo", choices=ASSIGNMENTS)
    edge_rule: str = _f("fedavg", nonempty=True)
    codec: str = _f("dense", nonempty=True)
    link_bandwidth: float = _f(12.5e6, gt=0.0)
    link_latency_s: float = _f(0.02, ge=0.0)
    params: Mapping[str, Scalar] = _f(factory=dict)
