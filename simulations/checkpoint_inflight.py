"""The asynchronous in-process engine's state in a checkpoint (``stamen simulate --state-dir`` with
``server.mode`` ``fedasync`` or ``fedbuff``): the virtual clients' memory and trip counters
(:mod:`stamen.simulations.checkpoint_state`) and the work in flight.

The asynchronous driver checkpoints after every handled reply. At that point every task in flight
has already been trained (a virtual client trains when it is dispatched) and its reply waits on
the virtual clock for its trip to finish. Both are stored: the clock (its time, its next event id,
and every pending arrival with the reply it carries: envelope bytes, metrics, error) and the
driver's matching tasks (client, round, model version, seed, expected base; the instructions are
rebuilt from the configuration). A resumed run therefore pops the same arrivals at the same
simulated times and dispatches the same clients: it repeats the uninterrupted run, records and
weights alike. No task is trained twice and no reply is lost.

A checkpoint written before this part existed has none of it: the run resumes with one warning,
its virtual clock at the last record's simulated time (so time never goes backwards), fresh client
memory, and the tasks that were in flight dispatched afresh.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from stamen.server.checkpoint import CheckpointError
from stamen.server.checkpoint_rules import Snapshot, Tree
from stamen.server.driver.async_driver import AsyncDriver
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.checkpoint_state import ClientMemory, capture_clients, restore_clients
from stamen.simulations.virtual_clock import Event, VirtualClock

log = logging.getLogger("stamen.simulations")


class ClockedEngine(Protocol):
    """What :class:`~stamen.simulations.engines.inprocess.VirtualClockTransport` exposes."""

    sync: ClientMemory
    events: VirtualClock


def capture_engine(engine: ClockedEngine, driver: AsyncDriver, snap: Snapshot) -> Tree:
    """Client memory, the virtual clock with its pending arrivals, and the driver's tasks in flight."""
    events = [_capture_event(e, snap) for e in engine.events.pending()]
    clock = {"now": engine.events.now, "next_seq": engine.events.next_seq, "events": events}
    in_flight = [_capture_task(t) for t in driver.in_flight.values()]
    return {"clients": capture_clients(engine.sync, snap), "clock": clock, "in_flight": in_flight}


def restore_engine(engine: ClockedEngine, driver: AsyncDriver, tree: Any, snap: Snapshot) -> None:
    """Put :func:`capture_engine` back (after the driver's own state); ``tree`` None: an older
    checkpoint (see the module docstring)."""
    if tree is None:
        now = driver.records[-1].sim_time_s if driver.records else 0.0
        engine.events = VirtualClock(now if math.isfinite(now) else 0.0)
        log.warning(
            "checkpoint predates the asynchronous engine's state: clients' memory starts afresh, the "
            "virtual clock at %.3f s, and the tasks in flight are dispatched again (the resumed run "
            "differs from an uninterrupted one)",
            engine.events.now,
        )
        return
    if not isinstance(tree, dict) or not isinstance(tree.get("clock"), dict):
        raise CheckpointError(f"checkpoint is corrupt: asynchronous engine state is {tree!r}")
    restore_clients(engine.sync, tree.get("clients"), snap)
    clock = tree["clock"]
    try:
        events = [_restore_event(e, snap) for e in clock["events"]]
        engine.events = VirtualClock.restored(float(clock["now"]), int(clock["next_seq"]), events)
        tasks = [_restore_task(t, driver) for t in tree["in_flight"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint is corrupt: work in flight: {exc}") from None
    waiting = sorted(e.payload.client for e in events)
    if sorted(t.client for t in tasks) != waiting:
        raise CheckpointError("checkpoint is corrupt: the tasks in flight and the pending replies differ")
    driver.in_flight = {t.client: t for t in tasks}


def engine_part(engine: ClockedEngine, driver: AsyncDriver) -> tuple[Any, Any]:
    """The ``(capture, restore)`` pair :class:`~stamen.server.checkpoint_run.RunState` takes."""
    return (
        lambda snap: capture_engine(engine, driver, snap),
        lambda tree, snap: restore_engine(engine, driver, tree, snap),
    )


def _capture_event(event: Event, snap: Snapshot) -> Tree:
    reply = event.payload
    if not isinstance(reply, Reply) or reply.weights is not None or reply.verifier is not None:
        raise CheckpointError(f"cannot checkpoint a pending arrival carrying {type(reply).__name__}")
    envelope = reply.envelope
    name = None if envelope is None else snap.put(f"clock/{event.seq}", np.frombuffer(envelope, np.uint8))
    fields = {"error": reply.error, "nbytes": reply.nbytes, "held": reply.held, "trip_s": reply.trip_s}
    try:
        metrics = json.loads(json.dumps(reply.metrics, default=_plain))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot checkpoint the pending reply of {reply.client}: {exc}") from None
    place = {"time": event.time, "key": event.key, "seq": event.seq}
    return {**place, "client": reply.client, "envelope": name, "metrics": metrics, **fields}


def _restore_event(tree: dict[str, Any], snap: Snapshot) -> Event:
    envelope = None if tree["envelope"] is None else snap.get(tree["envelope"]).tobytes()
    reply = Reply(
        str(tree["client"]),
        envelope=envelope,
        metrics=dict(tree["metrics"]),
        error=None if tree["error"] is None else str(tree["error"]),
        nbytes=int(tree["nbytes"]),
        held=None if tree["held"] is None else str(tree["held"]),
        trip_s=float(tree["trip_s"]),
    )
    return Event(float(tree["time"]), int(tree["key"]), int(tree["seq"]), reply)


def _capture_task(task: TrainTask) -> Tree:
    instr = task.instructions
    numbers = {"round": instr.round, "version": instr.version, "seed": instr.seed}
    return {"client": task.client, **numbers, "base": task.expected_base}


def _restore_task(tree: dict[str, Any], driver: AsyncDriver) -> TrainTask:
    """The task as the driver checks its reply (the model it carried was trained on already)."""
    instr = driver.instructions(int(tree["round"]), int(tree["version"]))
    instr = replace(instr, seed=int(tree["seed"]))
    return TrainTask(str(tree["client"]), instr, None, None, str(tree["base"]))


def _plain(value: object) -> object:
    """A numpy scalar in reply metrics as the Python number JSON can hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"reply metric of type {type(value).__name__} cannot be checkpointed")
