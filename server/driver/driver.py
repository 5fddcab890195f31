"""The round driver: one synchronous round, end to end, whatever the transport.

``sample -> configure (downlink per client) -> transport.train -> collect + validate ->
[simulation hook: update attack] -> rule (central DP is a wrapper rule) -> server step -> account ->
evaluate -> RoundRecord``. Bristle's peer mode is the same round with a relay instead of the server
step (:class:`~stamen.server.bristle.relay.PeerMode`).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stamen.server.aggregators.base import RoundContext, Rule
from stamen.server.driver.collect import CollectedUpdates, CollectPolicy, UpdateCollector, unflatten
from stamen.server.driver.stale_rows import treat_stale_rows
from stamen.server.driver.trip_budget import TripBudget
from stamen.server.driver.types import Payload, Reply, TrainTask, Transport, Weights
from stamen.server.history import FederationResult, ProgressFn, RoundRecord, hierarchy_fields
from stamen.server.privacy.central import BudgetExhausted
from stamen.server.sampling import draw_cohort
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.task.spec import RoundInstructions

log = logging.getLogger("stamen.server")


def interrupted(kept: int, what: str) -> str:
    """Ctrl-C: one warning naming what the run keeps (its finished rounds or model versions, as
    ``what``); returns the ``FederationResult.stopped`` reason."""
    log.warning("interrupted: keeping the %d finished %s(s)", kept, what)
    return "interrupted"


EvalFn = Callable[[Weights], tuple[float, float]]
SHOWN = 8  # clients at their cap named in a round's warning (then "and N more")


class Accountant(Protocol):
    """A client mechanism the server accounts (RQM): ``senders -> cumulative worst-client ε``."""

    def __call__(self, senders: Sequence[str]) -> float:
        """Charge one message per entry of ``senders``; the worst client's ε after."""
        ...

    @property
    def participations(self) -> dict[str, int]:
        """Messages charged to each client so far."""
        ...


class RoundHooks(Protocol):
    """The simulation's injection points (a deployed server has none)."""

    def sample(self, rnd: int, clients: Sequence[str], k: int) -> list[str] | None:
        """This round's cohort, or None for the driver's uniform draw."""
        ...

    def tamper(self, rnd: int, updates: CollectedUpdates, ctx: RoundContext) -> None:
        """Replace the malicious senders' rows in place (a simulated update attack)."""
        ...

    def delay(self, rnd: int, client: str) -> int:
        """How many versions stale ``client``'s work of round ``rnd`` is (0: fresh)."""
        ...


class Downlink(Protocol):
    """What each sampled client receives: full weights, or a signed delta for an edge device."""

    def payload(self, client: str, rnd: int, weights: Weights) -> Payload:
        """Full weights, a signed delta or a patch, and the hash the client will train from."""
        ...

    def nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """Bytes the downlink of ``tasks`` puts on the wire."""
        ...

    def observe(self, replies: Sequence[Reply]) -> None:
        """What the replies say about what clients hold (an edge device that could not apply)."""
        ...


class Resume(Protocol):
    """A state-dir (:class:`stamen.server.checkpoint_run.RunState`): resumes what it holds and
    checkpoints every round."""

    def run(self, driver: Any, initial: Weights, progress: ProgressFn | None) -> FederationResult:
        """Run ``driver`` from the state-dir's last completed round (or from ``initial``)."""
        ...


class Mode(Protocol):
    """How a round closes: aggregate into a new global model, or (peer mode) relay."""

    def extra(self, client: str) -> dict[str, object]:
        """Mode-specific payload for ``client``'s task."""
        ...

    def close(self, rnd: int, updates: CollectedUpdates) -> Weights | None:
        """The new global weights, or None to keep the current ones."""
        ...

    def evaluate(self, weights: Weights, fn: EvalFn) -> tuple[float, float]:
        """``(loss, accuracy)`` of the round's outcome."""
        ...

    def extra_nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """Bytes the mode's extra payload puts on the wire."""
        ...


@dataclass(frozen=True)
class DriverSettings:
    """The numbers the loop itself needs (from :class:`~stamen.server.config.ServerConfig`)."""

    rounds: int
    per_round: int
    seed: int
    timeout_s: float
    eval_every: int
    sampling: str = "fixed"  # or "poisson" (stamen.server.sampling)
    sample_rate: float = 1.0  # q, each client's inclusion probability under "poisson"
    secret_cohorts: bool = False  # cohorts from OS entropy, not seed (central DP, privacy.noise = secret)
    max_trips: int = 0  # tasks per client its privacy calibration assumed (local, dp_sgd, rqm); 0: no cap


class AggregateMode:
    """The usual round close: ``w <- base + server_lr * rule(stack, weights)``.

    A round with no accepted update keeps the model, unless the rule releases empty rounds (central
    DP: the noise is still released and counted).
    """

    def __init__(self, rule: Rule, server_lr: float, hooks: RoundHooks | None = None) -> None:
        self.rule, self.server_lr, self.hooks = rule, server_lr, hooks

    def extra(self, client: str) -> dict[str, object]:
        """No extra payload."""
        del client
        return {}

    def close(self, rnd: int, updates: CollectedUpdates) -> Weights | None:
        """Attack hook (simulation), then the rule and the server step."""
        n = updates.stack.shape[0]
        if n == 0 and not self.rule.traits.releases_empty:
            return None
        senders = tuple(updates.senders)
        trips = tuple(updates.trip_s.get(c, math.nan) for c in senders)
        ctx = RoundContext(rnd, updates.table, updates.base_flat(), senders, trips)
        if self.hooks is not None and n:
            self.hooks.tamper(rnd, updates, ctx)
        self.rule.begin_round(ctx)
        agg = self.rule(updates.stack, updates.weights if n else None)
        step = unflatten(np.asarray(agg, dtype=np.float32) * np.float32(self.server_lr), updates.table)
        return {k: updates.base[k] + step[k] for k in updates.base}

    def evaluate(self, weights: Weights, fn: EvalFn) -> tuple[float, float]:
        """The global model's ``(loss, accuracy)``."""
        return fn(weights)

    def extra_nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """No extra payload."""
        del tasks
        return 0


class RoundDriver:
    """Runs synchronous rounds over any :class:`~stamen.server.driver.types.Transport`.

    Parameters
    ----------
    settings : DriverSettings
        Rounds, cohort size, seed, reply timeout, evaluation period.
    transport : Transport
        How tasks reach clients (in-process calls, a Flower Grid).
    instructions : callable
        ``(round, version) -> RoundInstructions`` (task, training spec of the round, codec).
    mode, downlink : Mode, Downlink
        :class:`AggregateMode` or Bristle's peer relay; full weights, or signed deltas to devices.
    policy, rule : CollectPolicy, Rule
        What a reply must satisfy; the aggregation rule (its ``epsilon()`` is central DP's spend).
    evaluate : callable or None
        ``weights -> (loss, accuracy)`` on a held-out set, or None.
    hooks : RoundHooks or None
        The simulation's sampler and attack; None in a deployment.
    accountant : callable or None
        ``senders -> ε`` for a client mechanism the server accounts (RQM).
    stale : StaleHandling or None
        How updates computed from an older version are treated (clients the simulation delays).
    history : ModelHistory or None
        The versions stale clients train from (needed with ``stale``).
    """

    def __init__(
        self,
        settings: DriverSettings,
        transport: Transport,
        instructions: Callable[[int, int], RoundInstructions],
        mode: Mode,
        downlink: Downlink,
        policy: CollectPolicy,
        rule: Rule,
        evaluate: EvalFn | None = None,
        hooks: RoundHooks | None = None,
        accountant: Accountant | None = None,
        stale: StaleHandling | None = None,
        history: ModelHistory | None = None,
    ) -> None:
        self.settings, self.transport, self.instructions = settings, transport, instructions
        self.mode, self.downlink, self.policy, self.rule = mode, downlink, policy, rule
        self.evaluate_fn, self.hooks, self.accountant = evaluate, hooks, accountant
        self.stale, self.history = stale, history
        self.worst_client_eps: float | None = None  # the largest ε a client reported
        # local DP: most tasks sent to a client -> its ε (:mod:`stamen.server.privacy.client_bound`)
        self.client_bound: Callable[[int], float | None] | None = None
        self.budget = TripBudget(settings.max_trips)  # tasks sent to each client (checkpointed)
        self.last: CollectedUpdates | None = None
        self.resume: Resume | None = None  # a state-dir: resume, then checkpoint every round
        self.on_round: Callable[[int, Weights, list[RoundRecord]], None] | None = None

    def run(self, initial: Weights, progress: ProgressFn | None = None, start: int = 1) -> FederationResult:
        """Rounds ``start .. settings.rounds`` (resumed from the state-dir when there is one)."""
        if self.resume is not None:
            return self.resume.run(self, initial, progress)
        return self.rounds_from(initial, progress, start)

    def rounds_from(
        self,
        initial: Weights,
        progress: ProgressFn | None = None,
        start: int = 1,
        done: Sequence[RoundRecord] = (),
    ) -> FederationResult:
        """Rounds ``start .. settings.rounds`` after the ``done`` ones; Ctrl-C or an exhausted privacy
        budget end the run after the last finished round (``FederationResult.stopped`` says why)."""
        weights, history, stopped = initial, list(done), None
        try:
            for rnd in range(start, self.settings.rounds + 1):
                weights, record = self.round(rnd, weights)
                history.append(record)
                if self.on_round is not None:
                    self.on_round(rnd, weights, history)
                if progress is not None:
                    progress(record)
        except KeyboardInterrupt:
            stopped = interrupted(len(history), "round")
        except BudgetExhausted as exc:
            stopped = "privacy budget exhausted"
            log.warning("%s", exc)
        return FederationResult(rounds=history, weights=weights, stopped=stopped)

    def round(self, rnd: int, weights: Weights) -> tuple[Weights, RoundRecord]:
        """One round from ``weights``; returns the new weights and the round's record."""
        t0 = time.perf_counter()
        if self.history is not None:
            self.history.put(rnd, weights)
        tasks = self.configure(rnd, weights)
        self.budget.spend_all(t.client for t in tasks)  # each task sent (a trip cap bounds them)
        updates = self.train_and_collect(weights, tasks)
        if self.stale is not None and self.history is not None:
            treat_stale_rows(rnd, updates, tasks, self.stale, self.history)
        new = self.mode.close(rnd, updates)
        if new is None:
            log.warning("round %d: no update accepted; the model is unchanged", rnd)
        weights = weights if new is None else new
        down = self.downlink.nbytes(tasks) + self.mode.extra_nbytes(tasks)
        return weights, self.record(rnd, weights, updates, down, t0)

    def configure(self, rnd: int, weights: Weights) -> list[TrainTask]:
        """Sample the cohort and build each client's task (none for an empty Poisson draw)."""
        available = self.transport.clients()
        clients = self.within_budget(rnd, available)
        k = min(self.settings.per_round, len(clients))
        if k == 0:
            raise RuntimeError(f"round {rnd}: no client is available")
        if len(available) < self.settings.per_round:
            log.warning(
                "round %d: %d clients available, %d asked for", rnd, len(available), self.settings.per_round
            )
        cohort = self.hooks.sample(rnd, clients, k) if self.hooks is not None else None
        if cohort is None:
            s = self.settings
            seed = secrets.randbits(128) if s.secret_cohorts else s.seed
            cohort = draw_cohort(s.sampling, seed, rnd, clients, k, s.sample_rate)
        if not cohort:
            log.info("round %d: the Poisson draw sampled no client", rnd)
        shared: dict[int, RoundInstructions] = {}  # one (frozen) object per version for the cohort
        return [self.task(rnd, client, weights, shared) for client in cohort]

    def within_budget(self, rnd: int, clients: Sequence[str]) -> Sequence[str]:
        """The available ``clients`` the cohort is drawn from: all but those already sent the
        ``max_trips`` tasks their noise was calibrated for (a round run again after a crash: its first
        attempt's tasks count, see :func:`~stamen.server.checkpoint_run.charge_before_push`); when
        none of them has a task left the budget is exhausted (``BudgetExhausted``). Without a cap, or
        with nobody at it, ``clients`` itself (the seed's draw; no scan without a cap: this runs every
        round, over every available client). :meth:`round` counts the tasks."""
        if self.budget.cap <= 0:
            return clients
        held = [c for c in clients if not self.budget.allows(c)]
        if not held:
            return clients
        shown = ", ".join(held[:SHOWN]) + (f" and {len(held) - SHOWN} more" if len(held) > SHOWN else "")
        log.warning(
            "%s not asked in round %d: sent %d tasks each, the releases the noise was calibrated for",
            shown,
            rnd,
            self.budget.cap,
        )
        if len(held) == len(clients):
            self.budget.refuse(clients)  # raises: the budget is exhausted
        gone = set(held)
        return [c for c in clients if c not in gone]

    def task(
        self, rnd: int, client: str, weights: Weights, shared: dict[int, RoundInstructions]
    ) -> TrainTask:
        """``client``'s task: the current version, or an older one for a client the simulation
        delays (it trains from the model of ``delay`` rounds ago)."""
        delay = self.hooks.delay(rnd, client) if self.hooks is not None and self.history is not None else 0
        version = rnd - min(delay, rnd - 1)
        start = weights if version == rnd else dict(self.history.get(version))  # type: ignore[union-attr]
        sent = self.downlink.payload(client, rnd, start)
        instr = shared.get(version) or shared.setdefault(version, self.instructions(rnd, version))
        return TrainTask(
            client, instr, sent.weights, sent.delta, sent.base, self.mode.extra(client), sent.patch
        )

    def train_and_collect(self, weights: Weights, tasks: Sequence[TrainTask]) -> CollectedUpdates:
        """Run the tasks and collect the replies; a transport that streams its replies in cohort
        order (``train_stream``, the in-process engine) has each chunk verified while later clients
        still train. Same replies, same order, same result either way."""
        stream = getattr(self.transport, "train_stream", None)
        if not tasks or stream is None:
            replies = self.transport.train(tasks, self.settings.timeout_s) if tasks else []
            self.downlink.observe(replies)
            return self.collect(weights, tasks, replies)
        collector = UpdateCollector(weights, tasks, self.policy)
        for chunk in stream(tasks, self.settings.timeout_s):
            self.downlink.observe(chunk)
            for reply in chunk:
                collector.add(reply)
        self.last = collector.finish()
        return self.last

    def collect(
        self, weights: Weights, tasks: Sequence[TrainTask], replies: Sequence[Reply]
    ) -> CollectedUpdates:
        """Verify, decode and validate the replies (in cohort order) into the round's stack."""
        collector = UpdateCollector(weights, tasks, self.policy)
        order = {t.client: i for i, t in enumerate(tasks)}
        for reply in sorted(replies, key=lambda r: (order.get(r.client, len(order)), r.client)):
            collector.add(reply)
        self.last = collector.finish()
        return self.last

    def record(
        self, rnd: int, weights: Weights, updates: CollectedUpdates, bytes_down: int, t0: float
    ) -> RoundRecord:
        """Account, evaluate and build the round's record."""
        stats = updates.stats
        eps = self.rule.epsilon()
        if self.accountant is not None:  # every task and every surplus update: what was released, at most
            eps = self.accountant(stats.seen)
        if stats.client_epsilon is not None:
            self.worst_client_eps = max(self.worst_client_eps or 0.0, stats.client_epsilon)
        loss, acc = math.nan, math.nan
        due = rnd % self.settings.eval_every == 0 or rnd == self.settings.rounds
        if due and self.evaluate_fn is not None:
            loss, acc = self.mode.evaluate(weights, self.evaluate_fn)
        return RoundRecord(
            round=rnd,
            accuracy=acc,
            loss=loss,
            bytes_up=stats.bytes_up,
            bytes_down=bytes_down,
            epsilon=eps if eps is not None else self.client_epsilon(),
            rejected=stats.rejected,
            wall_s=time.perf_counter() - t0,
            sim_time_s=self.transport.now(),
            staleness_max=max(updates.taus, default=0),
            staleness_mean=float(np.mean(updates.taus)) if any(updates.taus) else math.nan,
            **hierarchy_fields(self.rule.round_metrics() if updates.stack.shape[0] else {}),
        )

    def client_epsilon(self) -> float | None:
        """The worst client's ε (local DP, DP-SGD): the largest it reported, or, when larger, what the
        tasks sent to the most-asked client imply (:attr:`client_bound`); None when neither is known."""
        bound = self.client_bound(self.budget.most()) if self.client_bound is not None else None
        return max((e for e in (self.worst_client_eps, bound) if e is not None), default=None)
