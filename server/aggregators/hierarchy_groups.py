"""Which region a client belongs to: a pure, stable function of its key.

A client key ends in a number (``"client-<partition id>"`` in a simulation, ``"node-<node id>"`` in a
deployment; :func:`stamen.server.driver.types.client_index`). Three assignments:

- ``modulo``: region ``i mod G``. Works for every engine: partition ids give balanced regions,
  SuperNode ids (random 64-bit integers) give regions balanced in expectation. The default, because
  a deployment's keys have no known range.
- ``contiguous``: region ``floor(i * G / N)`` for ``0 <= i < N`` (``N = data.num_clients``): blocks of
  neighbouring partitions, e.g. regions that hold neighbouring shards. Simulation keys only; a key
  outside ``[0, N)`` is a ``ValueError``.
- ``hash``: BLAKE2b-64 of the UTF-8 key, mod ``G``: any key, no arithmetic structure.

None of them depends on the round or the cohort, so a client never changes region (an edge server
serves the same devices every round).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from stamen.task.settings_hierarchy import ASSIGNMENTS

RegionOf = Callable[[str], int]


def key_number(client: str) -> int:
    """The number a client key ends in (``"client-3"`` -> 3); ``ValueError`` naming the key otherwise."""
    tail = client.rpartition("-")[2]
    if not tail.isdigit():
        raise ValueError(f"hierarchy: client key {client!r} does not end in a number; use assign='hash'")
    return int(tail)


def hash_region(client: str, groups: int) -> int:
    """BLAKE2b-64 of ``client`` (UTF-8), big-endian, mod ``groups``."""
    digest = hashlib.blake2b(client.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % groups


def contiguous_region(client: str, groups: int, num_clients: int) -> int:
    """``floor(i * groups / num_clients)`` for the key's number ``i`` in ``[0, num_clients)``."""
    i = key_number(client)
    if i >= num_clients:
        raise ValueError(
            f"hierarchy: assign='contiguous' needs client numbers in [0, {num_clients}), got {client!r}; "
            "use assign='modulo' or 'hash' for deployed node keys"
        )
    return i * groups // num_clients


def region_function(assign: str, groups: int, num_clients: int) -> RegionOf:
    """``client key -> region in [0, groups)`` for assignment ``assign``.

    Parameters
    ----------
    assign : {"modulo", "contiguous", "hash"}
    groups : int
        Number of regions, ``>= 1``.
    num_clients : int
        ``data.num_clients`` (used by ``"contiguous"`` only), ``>= 1``.
    """
    if groups < 1 or num_clients < 1:
        raise ValueError(f"hierarchy: groups and num_clients must be >= 1, got {groups}, {num_clients}")
    if assign == "modulo":
        return lambda client: key_number(client) % groups
    if assign == "contiguous":
        return lambda client: contiguous_region(client, groups, num_clients)
    if assign == "hash":
        return lambda client: hash_region(client, groups)
    raise ValueError(f"hierarchy: assign={assign!r} is unknown; available: {', '.join(ASSIGNMENTS)}")


def partition_rows(senders: Sequence[str], region_of: RegionOf) -> list[tuple[int, np.ndarray]]:
    """``[(region, row indices)]`` for the non-empty regions, in increasing region order; each
    region's rows keep their stack (cohort) order."""
    regions = np.fromiter((region_of(s) for s in senders), dtype=np.int64, count=len(senders))
    return [(int(g), np.flatnonzero(regions == g)) for g in np.unique(regions)]
