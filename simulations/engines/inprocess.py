"""``inprocess`` engine: the whole federation in one process, no per-client process or message.

pfl-research style: one model object reused by every client, the round's update stack preallocated
by the driver's collector, data partitions cached. The transport calls the client round
(:func:`stamen.client.node.client_round`: the same trainer, DP and codec code as the ClientApp, real
packed envelopes whose ``len()`` is counted) and hands the bytes to the same round driver the
Flower apps use. Only the transport differs. Time is simulated from the clients' timing model
(:mod:`stamen.simulations.engines.clock`): synchronous rounds on a round clock, asynchronous modes
on a virtual event clock, so a 10,000-client asynchronous run costs only its local updates.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from stamen.client.downlink_cache import Held, resolve
from stamen.client.node import Received, client_round
from stamen.client.state import ClientState
from stamen.server.checkpoint_run import RunState
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.federation import assemble_async
from stamen.server.history import FederationResult, ProgressFn
from stamen.simulations.checkpoint_inflight import engine_part
from stamen.simulations.client_states import ClientStates
from stamen.simulations.devices import SimulatedDevices
from stamen.simulations.engines.chunks import MAX_ROW_BYTES, reply_chunks, task_slices
from stamen.simulations.engines.clock import TripMeter, round_end
from stamen.simulations.engines.gc_freeze import frozen_gc
from stamen.simulations.engines.paths import EnginePath, resolve_path
from stamen.simulations.engines.rows import Released, RowJob, train_and_release
from stamen.simulations.nodes import ClientNames, SimulatedNodes
from stamen.simulations.parallel import WorkerPool, WorkerSpec
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import partitions
from stamen.simulations.timing import Trip
from stamen.simulations.virtual_clock import VirtualClock
from stamen.simulations.window_openings import WindowOpenings
from stamen.task.bristle.peer import PeerConfig
from stamen.task.bristle.relayed import Relayed
from stamen.task.local_base import local_base
from stamen.task.models import model_structure

ClientProgressFn = Callable[[int, int], None]  # (clients done, clients in round)
COHORT_TRIPS = 8  # chunks of at least this many replies draw their trips at once (cheaper from ~4)
log = logging.getLogger("stamen.simulations")


class InProcessTransport:
    """Runs every task's client round right here, in cohort order; a round's simulated duration
    comes from the slowest trip (lost clients' replies never arrive)."""

    def __init__(
        self,
        nodes: SimulatedNodes,
        num_clients: int,
        model: torch.nn.Module,
        progress: ClientProgressFn | None = None,
        meter: TripMeter | None = None,
        timeout_s: float = 600.0,
        path: EnginePath | None = None,
        pool: WorkerPool | None = None,
        state_memory: int = 1 << 30,
    ) -> None:
        self.nodes, self.model, self.progress, self.meter = nodes, model, progress, meter
        self.path, self.pool = path, pool
        self._clients = ClientNames(num_clients)
        self.states = ClientStates(state_memory)  # per-client memory across rounds, bounded in RAM
        self.held: dict[int, Held] = {}  # the model each client keeps (cached downlink)
        self.clock, self.timeout_s = 0.0, timeout_s
        self.rounds_in_workers = 0  # rounds the worker pool trained (the engine does until it is up)

    def clients(self) -> Sequence[str]:
        """Every virtual client, by partition id (names made on demand)."""
        return self._clients

    def now(self) -> float:
        """Simulated seconds since the run started (NaN without a timing model)."""
        return self.clock if self.meter is not None else float("nan")

    def train(self, tasks: Sequence[TrainTask], timeout: float) -> list[Reply]:
        """Each client's round (cohort-batched training when the engine's path allows it, else one
        after the other); replies of lost trips are dropped."""
        return [reply for chunk in self.train_stream(tasks, timeout) for reply in chunk]

    def train_stream(self, tasks: Sequence[TrainTask], timeout: float) -> Iterator[list[Reply]]:
        """:meth:`train`'s replies in cohort order, chunk by chunk as they are made (bounded chunks of
        clients in the per-client loop; the whole cohort when batched or with workers), so the round
        driver verifies earlier replies while later clients still train."""
        del timeout
        trips: list[Trip] = []
        rows = self.path is not None and (self.path.batched or self.pool is not None)
        ready = [self.receive(t) for t in tasks]
        if self.progress is not None:
            self.progress(0, len(tasks))  # the round has begun (a cohort reports once it is done)
        made = [self._rows(ready)] if rows else self._per_client(ready)
        done = 0
        for chunk in made:
            delivered = []
            sent = tasks[done : done + len(chunk)]
            for reply, trip in zip(chunk, self._trips(sent, chunk), strict=True):
                if trip is not None:
                    reply.trip_s = trip.finish - trip.dispatched
                    trips.append(trip)
                if trip is None or trip.delivered:
                    delivered.append(reply)
            done += len(chunk)
            if self.progress is not None:
                self.progress(done, len(tasks))
            yield delivered
        if self.meter is not None:
            self.clock = round_end(self.clock, trips, self.timeout_s)
        self.states.settle()

    def _per_client(self, tasks: Sequence[TrainTask]) -> Iterator[list[Reply]]:
        """The per-client loop in bounded chunks (:mod:`~stamen.simulations.engines.chunks`): trained
        as rows, then released, where the round's clients can be trained apart and a row is small;
        else one client round after the other (edge devices, Bristle's peer mode, large models)."""
        dim = sum(int(np.size(v)) for v in (tasks[0].weights or {}).values()) if tasks else 0
        if self.path is None or not self.path.rows or 4 * dim > MAX_ROW_BYTES:
            return reply_chunks(self.run(t) for t in tasks)
        return (self._rows(tasks[part]) for part in task_slices(len(tasks), 4 * dim))

    def _rows(self, tasks: Sequence[TrainTask]) -> list[Reply]:
        """The cohort trained (cohort-batched, or the per-client loop) and each client's row released
        (local DP, codec, envelope) with its own state and seed, in cohort order, as :meth:`run`
        does: here, or here and by the worker processes, which return the envelopes."""
        assert self.path is not None
        if not tasks:
            return []
        jobs = [self._job(i, t) for i, t in enumerate(tasks)]
        dim = sum(int(np.size(v)) for v in (tasks[0].weights or {}).values())
        batched, device = self.path.batched, self.path.device

        def here(part: list[RowJob]) -> list[Released]:
            return train_and_release(part, dim, self.model, self.nodes, batched, device)

        if self.pool is not None and self.pool.ready():
            released = self.pool.run(jobs, dim, here)
            self.rounds_in_workers += 1
        else:  # in this process; while the workers start, in their slices (the same results)
            parts = self.pool.slices_of(jobs) if self.pool is not None else [jobs]
            released = [out for part in parts for out in here(part)]
        for out in released:
            self.states[jobs[out.index].pid] = out.state  # a worker's copy, with the round's changes
        return [out.reply for out in released]

    def _job(self, index: int, task: TrainTask) -> RowJob:
        pid = _pid(task.client)
        return RowJob(index, pid, task, self.states.setdefault(pid, ClientState()))

    def _trips(self, tasks: Sequence[TrainTask], replies: Sequence[Reply]) -> Sequence[Trip | None]:
        """The trips of a chunk's replies (None without a timing model): drawn for the chunk at once
        when it is a cohort, one by one otherwise (the same trips either way)."""
        if self.meter is None:
            return [None] * len(replies)
        if len(replies) < COHORT_TRIPS:
            return [self._trip(t, r) for t, r in zip(tasks, replies, strict=True)]
        return self.meter.trips([_pid(t.client) for t in tasks], self.clock, replies, tasks)

    def _trip(self, task: TrainTask, reply: Reply) -> Trip | None:
        if self.meter is None:
            return None
        pid = _pid(task.client)
        return self.meter.trip(pid, self.clock, reply, task, self.meter.examples(pid, reply, task))

    def receive(self, task: TrainTask) -> TrainTask:
        """``task`` with the weights its client trains from: a cached downlink's patch applied to
        the model the client keeps (the ClientApp's :func:`~stamen.client.downlink_cache.resolve`)."""
        if task.patch is None:
            return task
        pid = _pid(task.client)
        local = task.instructions.task
        self.held[pid] = resolve(self.held.get(pid), task.weights, task.patch, lambda: local_base(local))
        return replace(task, weights=self.held[pid][1], patch=None)

    def run(self, task: TrainTask) -> Reply:
        """One client's round (an exception in client code propagates: a simulation bug is loud)."""
        task = self.receive(task)
        pid = _pid(task.client)
        node, state = self.nodes.node(pid), self.states.setdefault(pid, ClientState())
        relayed, peer = task.extra.get("relayed"), task.extra.get("peer")
        received = Received(
            task.instructions,
            task.weights,
            task.downlink,
            relayed if isinstance(relayed, Relayed) else None,
            peer if isinstance(peer, PeerConfig) else None,
            base_hash=task.expected_base if task.weights is not None else None,
        )
        payload, metrics = client_round(node, received, self.model, state)
        return Reply(task.client, envelope=payload, metrics=dict(metrics), nbytes=len(payload))


class VirtualClockTransport:
    """The asynchronous in-process transport: a pushed task is trained at once (on the model it was
    given) and its reply is scheduled at its trip's finishing time; ``pull`` advances the virtual
    clock to the next arrival. A lost trip becomes a timeout at dispatch + ``timeout_s``."""

    def __init__(self, sync: InProcessTransport, meter: TripMeter, timeout_s: float) -> None:
        self.sync, self.meter, self.timeout_s = sync, meter, timeout_s
        self.events = VirtualClock()

    @property
    def events(self) -> VirtualClock:
        """The virtual clock and its pending arrivals (one per task in flight)."""
        return self._events

    @events.setter
    def events(self, clock: VirtualClock) -> None:
        """A new clock (a resumed checkpoint's): the busy clients are its pending arrivals' and the
        window openings are looked up afresh (:mod:`~stamen.simulations.window_openings`)."""
        self._events = clock
        self._busy = {_pid(e.payload.client) for e in clock.pending() if isinstance(e.payload, Reply)}
        self._openings: WindowOpenings | None = None

    def clients(self) -> Sequence[str]:
        """Every virtual client."""
        return self.sync.clients()

    def ready(self, client: str) -> bool:
        """Whether ``client`` is inside an availability window now."""
        return self.meter.timing.available(_pid(client), self.events.now)

    def ready_indices(self, clients: Sequence[str]) -> np.ndarray | None:
        """The positions in ``clients`` of those inside a window now, found at once (None unless
        ``clients`` is this run's own client list, where position ``i`` is ``client-i``)."""
        if clients is not self.sync.clients():
            return None
        return np.flatnonzero(self.meter.timing.available_mask(self.events.now))

    def now(self) -> float:
        """Simulated seconds since the run started."""
        return self.events.now

    def push(self, task: TrainTask) -> None:
        """Train now; the reply arrives when the trip finishes (or times out when it is lost)."""
        reply = self.sync.run(task)
        reply.task = task  # the dispatch it answers (one arrival per dispatch, never given up early)
        self.sync.states.settle()
        pid = _pid(task.client)
        self._busy.add(pid)
        trip = self.meter.trip(pid, self.events.now, reply, task, self.meter.examples(pid, reply, task))
        if trip.delivered:
            self.events.schedule(trip.finish, reply, key=pid)
        else:
            error = f"no reply before the timeout (simulated {trip.reason})"
            lost = Reply(task.client, error=error, task=task)
            self.events.schedule(self.events.now + self.timeout_s, lost, key=pid)

    def pull(self, timeout: float) -> list[Reply]:
        """The next arrival (the virtual clock jumps to it)."""
        del timeout
        if not len(self.events):
            return []
        reply = self.events.pop().payload
        if isinstance(reply, Reply):
            pid = _pid(reply.client)
            self._busy.discard(pid)
            if self._openings is not None:
                self._openings.returned(pid, self.events.now)
        return [reply]

    def wait_ready(self, eligible: Callable[[str], bool] | None = None) -> bool:
        """No task is in flight and no client ``eligible`` takes (all by default: the driver passes
        those with privacy budget left) is inside an availability window: the clock jumps to the
        first such window's opening (as a synchronous round's trip waits for its client's window)."""
        if len(self.events):  # a reply is still to come: it moves the clock
            return False
        opens = self._first_opening(eligible)
        if not math.isfinite(opens):
            raise ValueError(f"no client is available to train at simulated t={self.events.now:g}s or later")
        self.events.pop_until(opens)
        return True

    def advance_to_window(self, eligible: Callable[[str], bool] | None = None) -> bool:
        """A slot is free and no idle client is ready: when the next window opening of an idle
        client ``eligible`` takes comes before the next arrival, the clock moves to it (True: that
        client is dispatched at its window's opening); False when an arrival comes first (or at the
        same instant) or no window ever opens (``availability = "always"``: the idle are all ready)."""
        if self.meter.timing.config.availability == "always":
            return False
        nxt = self.events.peek()
        opens = self._first_opening(eligible)
        if not self.events.now < opens < (math.inf if nxt is None else nxt.time):
            return False
        self.events.pop_until(opens)
        return True

    def _first_opening(self, eligible: Callable[[str], bool] | None) -> float:
        """The first time >= now an idle client ``eligible`` takes is available (heap, not a scan)."""
        names = self.clients()
        if self._openings is None:
            self._openings = WindowOpenings(self.meter.timing, range(len(names)), self.events.now)

        def allowed(pid: int) -> bool:
            return eligible is None or eligible(names[pid])

        return self._openings.first(self.events.now, self._busy, allowed)


def _pid(client: str) -> int:
    return int(client.rpartition("-")[2])


def run_inprocess(
    plan: SimulationPlan, progress: ProgressFn | None = None, client_progress: ClientProgressFn | None = None
) -> FederationResult:
    """Run the planned rounds (or asynchronous versions) in this process. Whatever was opened is
    closed however the run ends, each close independent of the others (one that raises does not
    keep the rest open), and torch's thread count is restored to the caller's."""
    with contextlib.ExitStack() as opened:
        opened.callback(torch.set_num_threads, torch.get_num_threads())  # runs last
        torch.set_num_threads(1)  # same numerics as one-thread Flower clients
        devices, pool = plan.devices(), None
        if devices is not None:
            opened.callback(devices.close)
        model = model_structure(plan.cfg.task)
        meter = TripMeter(plan.timing(), plan.cfg.train.epochs, sizes=partitions(plan.data).sizes())
        path = engine_path(plan, model)
        torch.set_num_threads(path.threads)
        opened.enter_context(frozen_gc())  # what lives all run: out of the collector's walks
        if path.workers > 1:
            spec = WorkerSpec(plan.cfg.task, plan.data, plan.peer, path.batched, path.device.type)
            pool = WorkerPool(spec, path.workers)
            opened.callback(pool.close)
        sync = InProcessTransport(
            plan.nodes(devices),
            plan.cfg.num_clients,
            model,
            client_progress,
            meter,
            plan.cfg.timeout_s,
            path,
            pool,
            plan.scenario.engine.state_memory_mb << 20,
        )
        opened.callback(sync.states.close)
        result = _drive(plan, sync, meter, devices, progress)
    result.extra.update(plan.result_extra())
    spilled = {"client_states_spilled": sync.states.spilled, "rounds_in_workers": sync.rounds_in_workers}
    started = {"worker_start": pool.start_method if pool is not None else None}
    result.extra["engine_path"] = {**path.describe(), **peak_rss_mib(), **spilled, **started}
    return result


def _drive(
    plan: SimulationPlan,
    sync: InProcessTransport,
    meter: TripMeter,
    devices: SimulatedDevices | None,
    progress: ProgressFn | None,
) -> FederationResult:
    """The round driver (synchronous) or the asynchronous driver on the virtual clock, run (with a
    state-dir, the clients' memory, the clock and the work in flight are checkpointed too)."""
    if plan.cfg.settings.server.mode == "sync":
        return plan.driver(sync, devices).run(plan.initial, progress)
    clock = VirtualClockTransport(sync, meter, plan.cfg.timeout_s)
    driver = assemble_async(plan.cfg, clock, plan.initial, plan.evaluator(), plan.extras(devices))
    if isinstance(driver.resume, RunState):
        driver.resume.parts["engine"] = engine_part(clock, driver)
        driver.resume.optional.add("engine")  # a checkpoint from before it: resumed with a warning
    return driver.run(plan.initial, progress)


def engine_path(plan: SimulationPlan, model: torch.nn.Module) -> EnginePath:
    """The run's ``[engine]`` path, its fallback reason logged once."""
    path = resolve_path(plan.scenario, plan.cfg.task, plan.cfg.train, model, plan.peer)
    if path.fallback is not None and plan.scenario.engine.batching == "auto":
        log.info("per-client training (not cohort-batched): %s", path.fallback)
    return path


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory so far (``resource.getrusage``, Linux KiB -> MiB): this process's, and the
    largest of its finished children's (the worker processes, once closed)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": round(own, 1), "peak_rss_worker_mib": round(child, 1)}
