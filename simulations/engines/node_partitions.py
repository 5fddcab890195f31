"""Which partition each virtual SuperNode of a Flower simulation stands for, without asking it.

Flower's simulation engine registers its ``num_supernodes`` virtual SuperNodes with random 64-bit
node ids and gives node ``i`` (in registration order) ``partition-id = i`` in its node config
(``flwr/server/superlink/fleet/vce/vce_api.py::_register_nodes``, Flower 1.41). The ServerApp only
sees the node ids. Before, stamen's ServerApp learnt the mapping with one QUERY message per node, a
round trip through the Ray actors (about 25 s for 1,000 nodes on 2 cores). Instead
:func:`recording_partitions` wraps that registration function for the duration of the run and
keeps the mapping it returns; the ServerApp reads it (:meth:`NodePartitions.names`), so sampling
and seeds key on the same ``client-<partition id>`` names as the in-process engine.

When the wrap is not possible (a Flower version without that function) or the mapping does not
cover the nodes asked about, :meth:`NodePartitions.names` returns ``None`` and the transport falls
back to the query.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

log = logging.getLogger("stamen.simulations")

#: Flower's module and function that register the simulation's nodes and return node -> partition
REGISTER_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
REGISTER_FUNCTION = "_register_nodes"


class NodePartitions:
    """Node id -> partition id of one simulation run, filled when Flower registers its nodes.

    Parameters
    ----------
    wait_s : float, default 30.0
        How long :meth:`names` waits for the registration to finish (it ends right after the last
        node comes online, so the wait is normally zero), in seconds.
    """

    def __init__(self, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self._mapping: dict[int, int] = {}
        self._ready = threading.Event()
        self.available = False  # whether the registration is being recorded

    def record(self, mapping: Mapping[int, int]) -> None:
        """Keep ``mapping`` (node id -> partition id) and wake the readers."""
        self._mapping = {int(n): int(p) for n, p in mapping.items()}
        self._ready.set()

    def names(self, nodes: Sequence[int]) -> dict[int, str] | None:
        """``{node: "client-<partition id>"}`` for every node of ``nodes``; ``None`` when the
        mapping is not recorded or misses one of them (the caller then asks the nodes)."""
        if not self.available or not self._ready.wait(self.wait_s):
            return None
        missing = [n for n in nodes if n not in self._mapping]
        if missing:
            log.warning("%d nodes not in the recorded partition mapping; asking them", len(missing))
            return None
        return {n: f"client-{self._mapping[n]}" for n in nodes}


def _recording(original: Callable[..., Any], box: NodePartitions) -> Callable[..., Any]:
    def register(*args: Any, **kwargs: Any) -> Any:
        mapping = original(*args, **kwargs)
        box.record(mapping)
        return mapping

    return register


@contextlib.contextmanager
def recording_partitions(box: NodePartitions) -> Iterator[NodePartitions]:
    """Within the block, Flower's node registration also records its mapping into ``box``.

    The wrap is process-wide while the block runs (one simulation at a time per process, as
    ``run_simulation`` itself assumes) and is undone on exit.
    """
    import importlib

    module = importlib.import_module(REGISTER_MODULE)
    original = getattr(module, REGISTER_FUNCTION, None)
    if not callable(original):
        log.warning("%s.%s not found: node partitions will be queried", REGISTER_MODULE, REGISTER_FUNCTION)
        yield box
        return
    setattr(module, REGISTER_FUNCTION, _recording(original, box))
    box.available = True
    try:
        yield box
    finally:
        setattr(module, REGISTER_FUNCTION, original)
