"""The asynchronous driver's state (FedAsync / FedBuff) for a checkpoint: the version counter, the
open buffer (every accepted update not yet released, so none is lost), the server momentum, the
dispatch generator, the repeat counters, the tasks sent to each client (the privacy cap of
:mod:`~stamen.server.driver.trip_budget`) and the surplus replies read from each (a checkpoint
written before they were kept is refused under a cap or RQM, :func:`~stamen.server.checkpoint_parts.
lacks_trips`, and resumes with none otherwise), the staleness histogram and the count of late replies,
beside the parts both drivers share (:func:`~stamen.server.checkpoint_parts.capture_common`: rule,
accountant, model history, edge downlink).

Not stored here: the tasks in flight. A restarted server has no channel to them (a reply that
arrives later names a task this server never sent and is rejected as ``not training for this
server``); it dispatches afresh from the restored version. The in-process engine, whose replies wait
on its virtual clock, stores them and their replies as its own part
(:mod:`stamen.simulations.checkpoint_inflight`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from stamen.protocols import tensor_table
from stamen.server.checkpoint import CheckpointError
from stamen.server.checkpoint_parts import capture_common, lacks_trips, restore_common, trips_bound_privacy
from stamen.server.checkpoint_rules import Snapshot, Tree, rng_state, set_rng_state
from stamen.server.driver.async_driver import AsyncDriver
from stamen.server.driver.types import Weights
from stamen.server.history import RoundRecord

_LISTS = ("counts", "factors", "clients", "norms", "taus", "senders")
_NUMBERS = ("bytes_up", "bytes_down", "rejected")


def capture_async(driver: AsyncDriver, snap: Snapshot) -> Tree:
    """The driver's state between two handled replies (arrays into ``snap``)."""
    st = driver.step
    step: Tree = {name: list(getattr(st, name)) for name in _LISTS}
    step.update({name: int(getattr(st, name)) for name in _NUMBERS})
    step["client_eps"] = st.client_eps
    # one array per row: a row is written once (a part file), not again with every reply
    step["rows"] = [snap.put(f"buffer/rows/{i}", r) for i, r in enumerate(st.rows)]
    momentum = None if driver.momentum is None else snap.put("momentum", driver.momentum)
    return {
        **capture_common(driver, snap),
        "version": driver.version,
        "step": step,
        "momentum": momentum,
        "rng": rng_state(driver.rng),
        "repeats": [[c, v, k] for (c, v), k in sorted(driver.repeats.items())],
        "trips": dict(sorted(driver.budget.trips.items())),  # tasks sent per client (privacy cap)
        "surplus": dict(sorted(driver.budget.surplus.items())),  # replies that answered no task
        "staleness_histogram": [{str(t): n for t, n in h.items()} for h in driver.staleness_histogram],
        "late_replies": driver.late_replies,  # results.json's count, not restarted by a resume
    }


def restore_async(
    driver: AsyncDriver, tree: Mapping[str, Any], snap: Snapshot, weights: Weights, records: list[RoundRecord]
) -> None:
    """Put :func:`capture_async` back into a freshly assembled driver (instead of ``begin``)."""
    driver.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    driver.table, driver.records = tensor_table(driver.weights), list(records)
    driver.version = _int(tree.get("version"), "version")
    restore_common(driver, tree, snap)
    if driver.history.latest != driver.version:
        raise CheckpointError(
            f"checkpoint is corrupt: history ends at {driver.history.latest}, not {driver.version}"
        )
    _restore_step(driver, tree.get("step"), snap)
    momentum = tree.get("momentum")
    driver.momentum = None if momentum is None else np.asarray(snap.get(momentum), np.float32)
    set_rng_state(driver.rng, tree.get("rng"))
    try:
        driver.repeats = {(str(c), int(v)): int(k) for c, v, k in tree.get("repeats", [])}
        driver.budget.trips = _trips(driver, tree)
        driver.budget.surplus = Counter({str(c): int(n) for c, n in tree.get("surplus", {}).items()})
        driver.staleness_histogram = [
            {int(t): int(n) for t, n in h.items()} for h in tree.get("staleness_histogram", [])
        ]
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint is corrupt: asynchronous counters: {exc}") from None
    driver.late_replies = _int(tree.get("late_replies", 0), "late_replies")  # 0: written before it


def _trips(driver: AsyncDriver, tree: Mapping[str, Any]) -> Counter[str]:
    """Tasks sent to each client. A checkpoint written before they were kept is refused when they
    bound privacy (a trip cap, RQM's accounting of unread tasks, local DP's reported ε): no safe
    count can be rebuilt from it, and zero would let every client be sent its whole budget again
    (or understate what it spent)."""
    if "trips" not in tree:
        if trips_bound_privacy(driver):
            raise lacks_trips(driver)
        return Counter()
    return Counter({str(c): int(n) for c, n in tree["trips"].items()})


def _restore_step(driver: AsyncDriver, tree: object, snap: Snapshot) -> None:
    """The open buffer: rows (one per accepted update) and their per-update lists."""
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint is corrupt: buffer is {tree!r}")
    st = driver.step
    rows = _rows(tree.get("rows"), snap)
    width = sum(t.size for t in driver.table)
    if any(r.shape != (width,) for r in rows):
        raise CheckpointError(f"checkpoint is corrupt: buffered rows do not have the model's {width} values")
    for name in _LISTS:
        values = tree.get(name)
        if not isinstance(values, list):
            raise CheckpointError(f"checkpoint is corrupt: buffer {name!r} is {values!r}")
        setattr(st, name, list(values))
    if any(len(getattr(st, n)) != len(rows) for n in _LISTS if n != "senders"):
        raise CheckpointError("checkpoint is corrupt: buffer lists differ in length from its rows")
    st.rows = [np.array(r) for r in rows]
    for name in _NUMBERS:
        setattr(st, name, _int(tree.get(name), name))
    eps = tree.get("client_eps")
    st.client_eps = None if eps is None else float(eps)


def _rows(names: object, snap: Snapshot) -> list[np.ndarray]:
    """The buffered rows: a list of keys, one per row (None or one stacked array before)."""
    if names is None:
        return []
    if isinstance(names, str):
        return list(np.asarray(snap.get(names), np.float32))
    if not isinstance(names, list):
        raise CheckpointError(f"checkpoint is corrupt: buffered rows are {names!r}")
    return [np.asarray(snap.get(k), np.float32) for k in names]


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"checkpoint is corrupt: {name!r} is {value!r}")
    return value
