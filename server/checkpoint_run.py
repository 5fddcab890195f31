"""Resume a run from its state-dir and checkpoint it as it goes (``state-dir`` in the ServerApp's
run config, ``stamen simulate --state-dir``).

A :class:`RunState` is the driver's ``resume``: :meth:`RunState.run` reads the state-dir's
checkpoint (none: a fresh run), refuses one written by another configuration (one line naming the
differing keys), restores the driver's state into the freshly assembled driver and runs the rest,
writing a checkpoint (:func:`~stamen.server.checkpoint.write_checkpoint`, atomic) after every
completed round (``sync``) or handled reply (``fedasync``/``fedbuff``, so the open buffer survives).
A deployment also checkpoints what its nodes were sent before pushing it, where that bounds privacy
(:func:`count_before_push`, :func:`charge_before_push`): the nodes outlive a crashed server.
Its large arrays are content-addressed part files written once (:mod:`.checkpoint_store`), so an
asynchronous checkpoint writes what changed since the previous one, not the model history again.
When the run ends the checkpoint is marked finished; starting it again only reports the result.

Per-round randomness is a function of ``(seed, round)`` (client sampling, client seeds, central-DP
noise) or is stored (rule generators, the asynchronous dispatch generator), so a resumed synchronous
run repeats the rounds an uninterrupted one would have run.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stamen.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_fingerprint,
    fingerprint,
    read_checkpoint,
    remove_stale_temps,
    write_checkpoint,
)
from stamen.server.checkpoint_async import capture_async, restore_async
from stamen.server.checkpoint_parts import capture_sync, charge_accountant, restore_sync, trips_bound_privacy
from stamen.server.checkpoint_rules import Snapshot, Tree
from stamen.server.checkpoint_store import PartStore, lock_state_dir, unlock_state_dir
from stamen.server.config import ServerConfig
from stamen.server.driver.async_driver import AsyncDriver
from stamen.server.driver.collect import CollectedUpdates
from stamen.server.driver.driver import RoundDriver
from stamen.server.driver.types import TrainTask, Weights
from stamen.server.history import FederationResult, ProgressFn, RoundRecord

log = logging.getLogger("stamen.server")

Part = tuple[Callable[[Snapshot], Tree], Callable[[Any, Snapshot], None]]
"""An engine's own state: ``(capture(snap) -> tree, restore(tree, snap))``."""

RESUMABLE_STOPS = ("interrupted", "no replies", "no usable replies")  # a run that ended so is not finished
ENGINE_PARTS = ("engine", "clients")  # a simulation's own state (async, sync): its clients die with it


def run_fingerprint(cfg: ServerConfig) -> dict[str, str]:
    """The configuration a state-dir belongs to: every run setting and the reply timeout."""
    return fingerprint({"settings": cfg.settings.to_dict(), "timeout_s": cfg.timeout_s})


class RunState:
    """A run's state-dir.

    Parameters
    ----------
    state_dir : Path
        Where ``checkpoint.safetensors`` lives (created on the first write).
    fingerprint : mapping of str to str
        :func:`run_fingerprint` of this run.
    mode : str
        ``server.mode`` (``sync``, ``fedasync`` or ``fedbuff``).
    parts : mapping of str to Part
        An engine's own state (the in-process engine's client memory and simulated clock).
    """

    def __init__(
        self,
        state_dir: Path,
        fingerprint: Mapping[str, str],
        mode: str,
        parts: Mapping[str, Part] | None = None,
    ) -> None:
        self.state_dir, self.fingerprint, self.mode = Path(state_dir), dict(fingerprint), mode
        self.parts: dict[str, Part] = dict(parts or {})
        self.optional: set[str] = set()  # parts an older checkpoint may lack (restored from None)
        self.step = 0
        self.writes: list[tuple[float, int]] = []  # (seconds, bytes written) of every checkpoint
        self.store = PartStore(self.state_dir)  # large arrays, each written once (content-addressed)
        self.resumed_from: int | None = None
        self.last: Checkpoint | None = None  # the last checkpoint written by this run
        self._held: weakref.finalize | None = None  # the state-dir's lock, from load() to run()'s end

    def load(self) -> Checkpoint | None:
        """The state-dir's checkpoint if it belongs to this run (None: start afresh)."""
        probe = self.state_dir  # itself, or the nearest ancestor that exists
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            below = "" if probe == self.state_dir else f": {probe}"
            raise CheckpointError(f"state-dir {self.state_dir}{below} is a file, not a directory")
        if self._held is None or not self._held.alive:  # one run at a time: see lock_state_dir
            fd = lock_state_dir(self.state_dir)
            self._held = None if fd is None else weakref.finalize(self, unlock_state_dir, fd)
        remove_stale_temps(self.state_dir)
        ck = read_checkpoint(self.state_dir)
        # parts a crashed write left before its manifest was committed
        self.store.collect(set() if ck is None else set(ck.parts))
        if ck is not None:
            check_fingerprint(ck.fingerprint, self.fingerprint, self.state_dir)
        return ck

    def unlock(self) -> None:
        """Let go of the state-dir (held since :meth:`load`; at the latest when this object goes)."""
        if self._held is not None:
            self._held()

    def run(self, driver: Any, initial: Weights, progress: ProgressFn | None) -> FederationResult:
        """Run ``driver`` from the last checkpoint (or ``initial``), checkpointing as it goes; the
        state-dir is held for the run (a second run on it is refused)."""
        try:
            return self._run(driver, initial, progress)
        finally:
            self.unlock()

    def _run(self, driver: Any, initial: Weights, progress: ProgressFn | None) -> FederationResult:
        ck = self.load()
        if ck is not None and ck.finished:
            log.info(
                "state-dir %s holds a finished run (%d rounds%s); nothing to resume",
                self.state_dir,
                ck.step,
                f", stopped: {ck.stopped}" if ck.stopped else "",
            )
            extra = {"resumed_from": ck.step, "already_finished": True}
            return FederationResult(list(ck.records), dict(ck.weights), extra, ck.stopped)
        if ck is not None:
            self.resumed_from = self.step = ck.step
            log.info("resuming from %s after round %d", self.state_dir, ck.step)
        if isinstance(driver, AsyncDriver):
            result = self._run_async(driver, initial, progress, ck)
        else:
            result = self._run_sync(driver, initial, progress, ck)
        if self.resumed_from is not None:
            result.extra["resumed_from"] = self.resumed_from
        return result

    def _run_sync(
        self, driver: RoundDriver, initial: Weights, progress: ProgressFn | None, ck: Checkpoint | None
    ) -> FederationResult:
        if ck is not None:
            snap = Snapshot(dict(ck.arrays))
            restore_sync(driver, _tree(ck.state, "driver"), snap)
            self._restore_parts(ck.state, snap)
        start = 1 if ck is None else ck.step + 1
        weights = initial if ck is None else dict(ck.weights)

        def saved(rnd: int, w: Weights, records: list[RoundRecord]) -> None:
            self.save(rnd, w, records, lambda snap: capture_sync(driver, snap))

        driver.on_round = saved
        if self.deployed and trips_bound_privacy(
            driver
        ):  # nodes outlive it: the tasks sent bound the privacy spent
            saved(start - 1, weights, [] if ck is None else list(ck.records))  # the state to charge
            charge_before_push(driver, self)
        result = driver.rounds_from(weights, progress, start, () if ck is None else ck.records)
        self._finish(result, lambda snap: capture_sync(driver, snap))
        return result

    def _run_async(
        self, driver: AsyncDriver, initial: Weights, progress: ProgressFn | None, ck: Checkpoint | None
    ) -> FederationResult:
        if ck is None:
            driver.begin(initial)
        else:
            snap = Snapshot(dict(ck.arrays))
            restore_async(driver, _tree(ck.state, "driver"), snap, dict(ck.weights), list(ck.records))
            self._restore_parts(ck.state, snap)
        result = driver.proceed(self._checkpointing(driver, progress))
        self._finish(result, lambda snap: capture_async(driver, snap))
        return result

    def _checkpointing(self, driver: AsyncDriver, progress: ProgressFn | None) -> ProgressFn:
        """Checkpoint ``driver`` after every handled reply; a release is checkpointed before
        ``progress`` sees it (as a synchronous round is), so a progress callback that stops the run
        (Ctrl-C) keeps the version it was shown. Returns the progress function to run with."""
        saved = [False]  # the release was saved: the handled-reply save that follows is the same state

        def save() -> None:
            self.save(driver.version, driver.weights, driver.records, lambda s: capture_async(driver, s))

        def released(record: RoundRecord) -> None:
            save()
            saved[0] = True
            if progress is not None:
                progress(record)

        def handled() -> None:
            if not saved[0]:
                save()
            saved[0] = False

        driver.on_event = handled
        if self.deployed and trips_bound_privacy(driver):
            count_before_push(driver, save)  # a deployment: its nodes outlive a crashed server
        return released

    @property
    def deployed(self) -> bool:
        """A deployment (no simulation engine's state): its nodes outlive a crashed server."""
        return not any(name in self.parts for name in ENGINE_PARTS)

    def save(
        self,
        step: int,
        weights: Weights,
        records: list[RoundRecord],
        capture: Callable[[Snapshot], Tree],
        finished: bool = False,
        stopped: str | None = None,
    ) -> None:
        """Write the checkpoint after ``step`` (atomic; the previous one stays until it is whole)."""
        t0 = time.perf_counter()
        snap = Snapshot()
        state: Tree = {"driver": capture(snap)}
        state.update({name: cap(snap) for name, (cap, _) in self.parts.items()})
        ck = Checkpoint(
            step,
            self.mode,
            weights,
            tuple(records),
            self.fingerprint,
            state,
            snap.arrays,
            finished,
            stopped,
            groups=snap.groups,
        )
        self.write(ck, t0)
        self.step, self.last = step, ck

    def write(self, ck: Checkpoint, t0: float | None = None) -> None:
        """Write ``ck`` (atomic) and note the time and bytes it took."""
        t0 = time.perf_counter() if t0 is None else t0
        written = write_checkpoint(self.state_dir, ck, self.store)
        self.writes.append((time.perf_counter() - t0, written))

    def _finish(self, result: FederationResult, capture: Callable[[Snapshot], Tree]) -> None:
        """Mark the run finished unless it can go on (Ctrl-C, no replies)."""
        if result.stopped in RESUMABLE_STOPS:
            log.info("state-dir %s keeps round %d: start the run again to resume", self.state_dir, self.step)
            return
        self.save(self.step, result.weights, result.rounds, capture, finished=True, stopped=result.stopped)

    def _restore_parts(self, state: Mapping[str, Any], snap: Snapshot) -> None:
        missing = sorted(set(self.parts) - set(state) - self.optional)
        if missing:
            raise CheckpointError(f"checkpoint lacks the state of {', '.join(missing)}")
        for name, (_, restore) in self.parts.items():
            restore(state.get(name), snap)


def count_before_push(driver: AsyncDriver, save: Callable[[], None]) -> None:
    """Checkpoint each task's trip before the task is pushed, where trips bound privacy (a cap,
    RQM, local DP's worst-client ε). A node keeps a pushed task, and may train and release its
    update, even if the server dies before the next handled reply's checkpoint; the resumed run
    must count that task, or each crash lets a client be sent more tasks than its noise was
    calibrated for, RQM never charges them and local DP's ε drops. (A simulation needs none of
    this: its clients die with it, and it resumes the tasks in flight.)"""
    push = driver.transport.push

    def counted_push(task: TrainTask) -> None:
        driver.budget.trips[task.client] += 1  # as the driver counts it once pushed
        try:
            save()
        finally:
            driver.budget.trips[task.client] -= 1
        push(task)

    driver.transport.push = counted_push


def charge_before_push(driver: RoundDriver, state: RunState) -> None:
    """Before a synchronous round's tasks are pushed, checkpoint the last completed round's state
    with each of those tasks counted (RQM: one message per client asked; the tasks sent to each
    client, which a trip cap bounds and local DP's worst-client ε is computed from). A node keeps a
    pushed task, and may train and release its update, even if the server dies before the round's
    own checkpoint; the resumed run then starts
    from counts that include them, and counts its own tasks of that round as usual (a client at its
    cap is not asked again). Without a crash the round's checkpoint replaces this one, holding what
    the round itself counted (every task once): nothing is counted twice. (A simulation needs none
    of this: its clients die with it.)"""
    train = driver.train_and_collect
    unchecked = [state.resumed_from is not None]  # the first push of a resumed run: see warn_new_nodes

    def charged_train(weights: Weights, tasks: Sequence[TrainTask]) -> CollectedUpdates:
        if tasks and state.last is not None:
            if unchecked and unchecked.pop():
                warn_new_nodes(state.last, driver.transport.clients())
            state.write(charged(state.last, [t.client for t in tasks]))
        return train(weights, tasks)

    driver.train_and_collect = charged_train


def warn_new_nodes(ck: Checkpoint, clients: Sequence[str]) -> None:
    """Warn (one line) when none of ``clients``, the nodes connected at a resumed deployment's first
    push, is one the checkpoint counted tasks or RQM releases for: the node ids changed, as they do
    when a SuperLink whose database is in memory (no ``--database``) restarts, and the per-client task
    cap, RQM's per-client charge and local DP's ε bound start again from zero for every node. (The
    connected nodes, not the round's cohort: a cohort drawn while some nodes are still reconnecting
    may miss every counted one with no id changed.)"""
    tree = _tree(ck.state, "driver")
    acc = tree.get("accountant")
    rqm = acc.get("participations") if isinstance(acc, dict) else None
    counted = set(tree.get("trips") or {}) | set(rqm or {})
    if counted and not counted.intersection(clients):
        log.warning(
            "none of the %d connected nodes is one the checkpoint counted (node ids changed: a SuperLink "
            "restarted without --database?); per-client task caps, RQM charges and the local-DP ε "
            "bound start again",
            len(set(clients)),
        )


def charged(ck: Checkpoint, clients: Sequence[str]) -> Checkpoint:
    """``ck`` with RQM's participation counts and the tasks sent raised by one per entry of
    ``clients`` (the tasks only where ``ck`` keeps them: one written before them resumes only
    without a cap, :func:`~stamen.server.checkpoint_parts.restore_sync`)."""
    tree = _tree(ck.state, "driver")
    driver = {**tree, "accountant": charge_accountant(tree.get("accountant"), clients)}
    if isinstance(tree.get("trips"), dict):
        driver["trips"] = dict(sorted((Counter(tree["trips"]) + Counter(clients)).items()))
    return replace(ck, state={**ck.state, "driver": driver})


def _tree(state: Mapping[str, Any], key: str) -> Tree:
    tree = state.get(key)
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint is corrupt: state {key!r} is {tree!r}")
    return tree


def attach(
    driver: RoundDriver | AsyncDriver, cfg: ServerConfig, state_dir: Path | str | None
) -> RunState | None:
    """Give ``driver`` the state-dir ``state_dir`` (None or empty: no checkpoint); returns it."""
    if not state_dir:
        return None
    state = RunState(Path(state_dir), run_fingerprint(cfg), cfg.settings.server.mode)
    driver.resume = state
    return state
