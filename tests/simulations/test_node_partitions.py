"""The Flower engine's node -> partition mapping, recorded as Flower registers its virtual nodes."""

from __future__ import annotations

import importlib
import threading

from hypothesis import given
from hypothesis import strategies as st

from stamen.simulations.engines.node_partitions import (
    REGISTER_FUNCTION,
    REGISTER_MODULE,
    NodePartitions,
    recording_partitions,
)


def test_names_of_a_recorded_mapping() -> None:
    """Hand case: node 901 is partition 0, node 17 partition 1."""
    box = NodePartitions(wait_s=0.0)
    box.available = True
    box.record({901: 0, 17: 1})
    assert box.names([17, 901]) == {17: "client-1", 901: "client-0"}


def test_unrecorded_or_incomplete_mapping_gives_none() -> None:
    """No wrap, nothing recorded, or a node outside the mapping: the caller must ask the nodes."""
    box = NodePartitions(wait_s=0.0)
    box.record({1: 0})
    assert box.names([1]) is None  # not available: the wrap was never installed
    box.available = True
    assert box.names([1, 2]) is None
    assert NodePartitions(wait_s=0.0).names([1]) is None


def test_names_wait_for_the_registration_to_finish() -> None:
    """The ServerApp may see the nodes online just before Flower's registration returns."""
    box = NodePartitions(wait_s=10.0)
    box.available = True
    timer = threading.Timer(0.05, box.record, args=({5: 3},))
    timer.start()
    assert box.names([5]) == {5: "client-3"}
    timer.join()


@given(st.lists(st.integers(1, 2**63 - 1), unique=True, min_size=1, max_size=50))
def test_mapping_from_flower_registration_order(node_ids: list[int]) -> None:
    """Property: Flower gives the i-th registered node partition i; names follow that order."""
    box = NodePartitions(wait_s=0.0)
    box.available = True
    box.record({n: i for i, n in enumerate(node_ids)})
    names = box.names(sorted(node_ids))
    assert names is not None
    assert [names[n] for n in node_ids] == [f"client-{i}" for i in range(len(node_ids))]


def test_recording_wraps_flower_registration_and_restores_it() -> None:
    """Flower's real registration (in-memory link state) is recorded, and the wrap is undone."""
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    module = importlib.import_module(REGISTER_MODULE)
    original = getattr(module, REGISTER_FUNCTION)
    box = NodePartitions(wait_s=0.0)
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    with recording_partitions(box):
        mapping = getattr(module, REGISTER_FUNCTION)(num_nodes=4, state_factory=factory)
    assert getattr(module, REGISTER_FUNCTION) is original
    assert sorted(mapping.values()) == [0, 1, 2, 3]
    names = box.names(list(mapping))
    assert names == {n: f"client-{p}" for n, p in mapping.items()}
