"""Asynchronous federation: FedAsync and FedBuff over a push/pull transport, no round barrier.

The server keeps ``concurrency`` clients training; each arriving update is checked against the
model version it was computed from (held in a bounded history: the server's own record of what it
sent, never a number the client echoes), treated by the staleness rules
(:class:`~stamen.server.staleness.handling.StaleHandling`), and then

- ``fedasync`` (Xie, Koyejo, Gupta, arXiv 1903.03934, Alg. 1): mixed in at once, ``w <- (1 - a) w +
  a (w_v + delta)``, ``a = alpha * s(tau)``, ``w_v`` the version the client trained from (``w_t``
  for a delta that ``dcasgd`` or ``gi`` rewrote for the current model);
- ``fedbuff`` (Nguyen et al., AISTATS 2022, Alg. 1): buffered; every ``buffer_size`` updates each
  is scaled by ``s(tau)``, the rule aggregates the scaled buffer with weights ``examples`` and the
  server steps, ``m <- beta m + server_lr * agg``, ``w <- w + m`` (fedavg with equal counts, or mean:
  the paper's ``server_lr * sum_k s(tau_k) Delta_k / K``).

Each version is one :class:`~stamen.server.history.RoundRecord` (``round`` = the version), with the
transport's clock and its updates' staleness. Exactly ``versions`` are released: replies pulled
after the last version's are only counted in ``after_end`` (``replies``, ``bytes_up``, ``in_flight``).
A reply is matched to the dispatch it answers (``Reply.task``: Flower's ``reply_to_message_id``); a
late one, to a task given up at the timeout, is dropped and counted in ``late_replies``, never taken
for the fresh task its client may have been sent since.

Privacy: RQM charges every reply with an update and, at the end, every unread task; client-side DP
caps trips (:mod:`.trip_budget`); central DP: one update per client per buffer, secret dispatch.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from stamen.protocols import StamenError, tensor_table
from stamen.server.aggregators.base import Rule
from stamen.server.driver.async_state import AsyncSettings, _Step, idle_clients
from stamen.server.driver.async_steps import drop_outliers, fedasync_mix, fedbuff_step
from stamen.server.driver.collect import CollectPolicy, flatten
from stamen.server.driver.driver import Accountant, Downlink, EvalFn, Resume, interrupted
from stamen.server.driver.reply import accept_reply, reported_epsilon
from stamen.server.driver.trip_budget import TripBudget
from stamen.server.driver.types import AsyncTransport, Reply, TrainTask, Weights, client_index
from stamen.server.history import FederationResult, ProgressFn, RoundRecord
from stamen.server.privacy.central import BudgetExhausted
from stamen.server.staleness.compensation import ModelVersions
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.task.spec import RoundInstructions

log = logging.getLogger("stamen.server")
MAX_IDLE_POLLS = 3  # consecutive empty pulls (each one a full timeout) before the run gives up
FRUITLESS_REPLIES = 1000  # x max(1, concurrency / 20): replies in a row with nothing usable: give up
DRAW_TRIES = 64  # random draws before a full scan for an idle client
REPEAT_STRIDE = 0x9E3779B1  # seed offset of a client's repeated trip from one model version


class AsyncDriver:
    """Runs FedAsync or FedBuff until ``settings.versions`` versions exist; parts as in ``RoundDriver``."""

    def __init__(
        self,
        settings: AsyncSettings,
        transport: AsyncTransport,
        instructions: Callable[[int, int], RoundInstructions],
        downlink: Downlink,
        policy: CollectPolicy,
        rule: Rule,
        stale: StaleHandling,
        history: ModelHistory,
        evaluate: EvalFn | None = None,
        accountant: Accountant | None = None,
    ) -> None:
        self.s, self.transport, self.instructions = settings, transport, instructions
        self.downlink, self.policy, self.rule, self.stale = downlink, policy, rule, stale
        self.history, self.evaluate_fn, self.accountant = history, evaluate, accountant
        secret = settings.secret_dispatch  # central DP: which clients train is not known from the seed
        self.rng = np.random.default_rng(secrets.randbits(128) if secret else [settings.seed, 0xA5F])
        self.in_flight: dict[str, TrainTask] = {}
        self.step = _Step()
        self.momentum: np.ndarray | None = None
        self.staleness_histogram: list[dict[int, int]] = []
        self.repeats: dict[tuple[str, int], int] = {}
        self.budget = TripBudget(settings.max_trips)  # tasks sent to each client, against its cap
        self.worst_client_eps: float | None = None  # the largest ε a client reported
        self.client_bound: Callable[[int], float | None] | None = None  # as RoundDriver's
        self.resume: Resume | None = None  # a state-dir: resume, then checkpoint every event
        self.on_event: Callable[[], None] | None = None  # after every handled reply and release
        self.after_end = {"replies": 0, "bytes_up": 0}  # replies pulled after the last version
        self.late_replies = 0  # replies to tasks given up at the timeout (dropped)

    def run(self, initial: Weights, progress: ProgressFn | None = None) -> FederationResult:
        """Produce the model versions (resumed from the state-dir when there is one)."""
        if self.resume is not None:
            return self.resume.run(self, initial, progress)
        self.begin(initial)
        return self.proceed(progress)

    def begin(self, initial: Weights) -> None:
        """Version 0 is ``initial``."""
        self.weights = {k: np.asarray(v, np.float32) for k, v in initial.items()}
        self.table, self.version = tensor_table(self.weights), 0
        self.records: list[RoundRecord] = []
        self.history.put(0, self.weights)

    def proceed(self, progress: ProgressFn | None = None) -> FederationResult:
        """Produce the remaining versions; Ctrl-C or an exhausted privacy budget stop after the last."""
        stopped = None
        try:
            stopped = self._loop(progress)
        except KeyboardInterrupt:
            stopped = interrupted(len(self.records), "version")
        except BudgetExhausted as exc:
            stopped = "privacy budget exhausted"
            log.warning("%s", exc)
        self._settle()
        after_end = {**self.after_end, "in_flight": len(self.in_flight)}
        extra = {
            "staleness_histogram": self.staleness_histogram,
            "history": self.history.memory_report(),
            "after_end": after_end,
            "late_replies": self.late_replies,
        }
        return FederationResult(rounds=self.records, weights=self.weights, extra=extra, stopped=stopped)

    def _loop(self, progress: ProgressFn | None) -> str | None:
        """Dispatch, pull, handle until the last version; bounded: a run whose pulls stay empty, or
        whose replies stay unusable (every trip lost, every update refused), stops and says so."""
        idle_polls, fruitless = 0, 0
        limit = FRUITLESS_REPLIES * max(1, self.s.concurrency // 20)
        while self.version < self.s.versions:
            self._dispatch()
            replies = self.transport.pull(self.s.timeout_s)
            if not replies:
                idle_polls += 1
                self._expire()
                if idle_polls >= MAX_IDLE_POLLS:
                    return "no replies"
                continue
            idle_polls, mark = 0, (self.version, len(self.step.rows))
            self._handle_batch(replies, progress)
            fruitless = fruitless + len(replies) if (self.version, len(self.step.rows)) == mark else 0
            if fruitless >= limit:
                log.warning("%d replies in a row brought no usable update: the run stops", fruitless)
                return "no usable replies"
        return None

    def _handle_batch(self, replies: Sequence[Reply], progress: ProgressFn | None) -> None:
        """The pulled replies in arrival order until the last version is released; the rest
        arrived after the end: not aggregated (no version past ``versions``), counted."""
        for i, reply in enumerate(replies):
            if self.version >= self.s.versions:
                self._after_end(replies[i:])
                return
            self._handle(reply, progress)
            if self.on_event is not None:
                self.on_event()

    def _after_end(self, replies: Sequence[Reply]) -> None:
        for reply in replies:
            self._charge(reply)  # before the pop: the first reply to a task in flight is no surplus
            if reply.task is None or self.in_flight.get(reply.client) is reply.task:
                self.in_flight.pop(reply.client, None)
            self.after_end["replies"] += 1
            self.after_end["bytes_up"] += reply.nbytes
        log.info("%d replies arrived after version %d, the last: not aggregated", len(replies), self.version)

    def _dispatch(self) -> None:
        """Keep ``concurrency`` clients training, drawn uniformly from the idle, ready ones with
        tasks left (:mod:`~stamen.server.driver.trip_budget`), also between arrivals as windows
        open; with none in flight and none ready, the transport first waits for one (``wait_ready``)."""
        self._fill()
        self._fill_at_openings()
        clients = self.transport.clients()
        if (
            not self.in_flight
            and not self.budget.spent(clients)
            and self.transport.wait_ready(self.budget.allows)
        ):
            self._fill()
        if not self.in_flight:
            self.budget.refuse(self.transport.clients())  # BudgetExhausted: the cap held someone back
            raise RuntimeError("no client is available to train (none connected and ready)")

    def _fill_at_openings(self) -> None:
        """A slot is free and nobody idle is ready: a virtual clock moves to the next window
        opening before the next arrival, whose client is sent a task then, rather than leaving the
        slot empty until a reply (each move dispatches one at least: ``concurrency`` moves at most)."""
        for _ in range(self.s.concurrency):  # no idle client: the transport says False
            if len(self.in_flight) >= self.s.concurrency:
                return
            if not self.transport.advance_to_window(self.budget.allows):
                return
            self._fill()

    def _fill(self) -> None:
        clients = self.transport.clients()
        while len(self.in_flight) < min(self.s.concurrency, len(clients)):
            client = self._draw(clients)
            if client is None:
                break
            sent = self.downlink.payload(client, self.version, self.weights)
            instr = self._instructions(client)
            task = TrainTask(client, instr, sent.weights, sent.delta, sent.base, patch=sent.patch)
            self.transport.push(task)
            self.in_flight[client] = task
            self.budget.spend(client)
            self.step.bytes_down += self.downlink.nbytes([task])

    def _instructions(self, client: str) -> RoundInstructions:
        """Round ``version + 1`` (1-based like synchronous rounds), training from ``version``; a
        client dispatched again from the same version gets a fresh seed (its k-th trip)."""
        instr = self.instructions(self.version + 1, self.version)
        key = (client, self.version)
        k = self.repeats.get(key, 0)
        self.repeats[key] = k + 1
        return instr if k == 0 else replace(instr, seed=(instr.seed + k * REPEAT_STRIDE) % 2**32)

    def _draw(self, clients: Sequence[str]) -> str | None:
        """A uniform draw among idle, ready clients under their trip cap: rejection sampling (O(1)
        while concurrency is small against the population), then a full scan."""
        for _ in range(DRAW_TRIES):
            client = clients[int(self.rng.integers(len(clients)))]
            if self._idle(client):
                return client
        idle = idle_clients(clients, self._idle, self.transport)  # the same list, found faster
        return idle[int(self.rng.integers(len(idle)))] if idle else None

    def _idle(self, client: str) -> bool:
        return client not in self.in_flight and self.budget.allows(client) and self.transport.ready(client)

    def _expire(self) -> None:
        """Nothing arrived within the timeout: the tasks in flight are given up (counted)."""
        for client in list(self.in_flight):
            self._reject(client, "no reply before the timeout")
        self.budget.give_up(self.in_flight.values())
        self.in_flight.clear()

    def _handle(self, reply: Reply, progress: ProgressFn | None) -> None:
        self.step.bytes_up += reply.nbytes
        self._charge(reply)
        task = self._match(reply)
        if task is None:
            return
        self.downlink.observe([reply])
        if reply.error is not None:
            self._reject(reply.client, f"client error: {reply.error}")
            return
        if self.s.one_row_per_client and reply.client in self.step.clients:
            self._reject(reply.client, "a second update in one buffer (central DP: one row per client)")
            return
        try:
            self._accept(reply, task)
        except StamenError as exc:
            self._reject(reply.client, f"{type(exc).__name__}: {exc}")
            return
        if len(self.step.rows) >= (1 if self.s.mode == "fedasync" else self.s.buffer_size):
            self._release(progress)

    def _match(self, reply: Reply) -> TrainTask | None:
        """The task in flight ``reply`` answers, out of flight; None for a late reply (its task was
        given up at the timeout; a fresh one stays in flight) or one to no task of this server."""
        task = self.in_flight.get(reply.client)
        if reply.task is not None and reply.task is not task:
            self.late_replies += 1
            log.warning("dropped a late reply from %s: its task was given up at the timeout", reply.client)
            return None
        if task is None:
            self._reject(reply.client, "not training for this server")
            return None
        return self.in_flight.pop(reply.client)

    def _accept(self, reply: Reply, task: TrainTask) -> None:
        """Check the reply against the version it was trained from; treat its staleness; buffer it."""
        sent = task.instructions.version
        tau = self.version - sent
        base = self._base(sent, tau, reply)
        got = accept_reply(reply, task, {} if base is None else base, self.table, self.policy)
        versions = None if base is None else ModelVersions(self.weights, base, self.version)
        mixing = self.s.mode == "fedasync"
        delta, _ = self.stale.treat(got.delta, tau, versions, client_index(reply.client), mixing)
        row = np.empty(sum(t.size for t in self.table), np.float32)
        flatten(delta, self.table, row)
        if mixing:  # the client's model w_v + delta is what FedAsync mixes; a delta that dcasgd or gi
            assert base is not None  # rewrote for the current model w_t (their point) lands on w_t
            base_row = np.empty_like(row)
            flatten(self.weights if self.stale.needs_base(tau) else base, self.table, base_row)
            row += base_row
        self.step.rows.append(row)
        self.step.counts.append(got.examples)
        self.step.factors.append(self.stale.async_factor(tau, mixing))  # s(tau) [x downweight]; once
        self.step.clients.append(reply.client)
        self.step.norms.append(got.norm)
        self.step.taus.append(tau)

    def _base(self, sent: int, tau: int, reply: Reply) -> Mapping[str, np.ndarray] | None:
        """``w_sent`` from the history; None when it is no longer held and nothing needs it: an
        encoded FedBuff update whose staleness rule uses only ``tau`` (``downweight``, ``weighted``,
        ``direct``). Otherwise a typed refusal: ``TooStale`` past ``max_staleness`` under ``drop``,
        else the history's ``UnknownVersionError`` naming its bound."""
        if sent not in self.history:
            needed = self.stale.needs_base(tau)  # TooStale under drop
            if not needed and self.s.mode == "fedbuff" and reply.envelope is not None:
                return None
        return self.history.get(sent)

    def _charge(self, reply: Reply) -> None:
        """``senders`` (what RQM charges) holds every released message, whatever becomes of it (before
        ``_match``); the ε it reports (local DP, DP-SGD) counts when valid, accepted update or not."""
        if self.budget.released(reply, self.in_flight):
            self.step.senders.append(reply.client)
            eps = reported_epsilon(reply.metrics)
            if eps is not None:
                self.step.client_eps = max(self.step.client_eps or 0.0, eps)

    def _settle(self) -> None:
        """The last record's ε after what no release counted: RQM charges the messages since and each
        task no reply answered (one never read may still have been released: :meth:`TripBudget.unread`);
        a reported ε (local DP, DP-SGD) since counts, and local DP's tasks sent since."""
        eps, st = None, self.step
        if self.accountant is not None and self.records:
            owed = st.senders + self.budget.unread(
                Counter(self.accountant.participations) + Counter(st.senders)
            )
            eps, st.senders = (self.accountant(owed) if owed else None), []
        elif self.rule.epsilon() is None and self.records:
            eps = self.client_epsilon(st.client_eps)
        if eps is not None:
            self.records[-1] = replace(self.records[-1], epsilon=eps)

    def _reject(self, client: str, reason: str) -> None:
        self.step.rejected += 1
        log.warning("rejected update from %s: %s", client, reason)

    def _release(self, progress: ProgressFn | None) -> None:
        """One new model version from the buffer (or the single FedAsync arrival)."""
        self._drop_outliers()
        if self.step.rows:
            if self.s.mode == "fedasync":
                self.weights = fedasync_mix(self.weights, self.step, self.table, self.s.alpha)
            else:
                self.weights, self.momentum = fedbuff_step(
                    self.weights,
                    self.step,
                    self.table,
                    self.rule,
                    self.policy,
                    self.version,
                    self.s,
                    self.momentum,
                )
        self.version += 1
        self.repeats.clear()  # seeds of repeated trips are per version
        self.history.put(self.version, self.weights)
        record = self._record()
        self.records.append(record)
        self.step = _Step()
        if progress is not None:
            progress(record)

    def _drop_outliers(self) -> None:
        for client, reason in drop_outliers(self.step, self.policy).items():
            self._reject(client, reason)

    def _record(self) -> RoundRecord:
        st = self.step
        self.staleness_histogram.append({int(t): n for t, n in sorted(Counter(st.taus).items())})
        worst = self.client_epsilon(st.client_eps)
        eps = self.rule.epsilon()
        if self.accountant is not None:
            eps = self.accountant(st.senders)
        loss, acc = math.nan, math.nan
        if self.evaluate_fn is not None and (
            self.version % self.s.eval_every == 0 or self.version == self.s.versions
        ):
            loss, acc = self.evaluate_fn(self.weights)
        return RoundRecord(
            round=self.version,
            accuracy=acc,
            loss=loss,
            bytes_up=st.bytes_up,
            bytes_down=st.bytes_down,
            epsilon=eps if eps is not None else worst,
            rejected=st.rejected,
            wall_s=time.perf_counter() - st.started,
            sim_time_s=self.transport.now(),
            staleness_max=max(st.taus, default=0),
            staleness_mean=float(np.mean(st.taus)) if st.taus else math.nan,
        )

    def client_epsilon(self, reported: float | None = None) -> float | None:
        """The worst client's ε, ``reported`` counted first (:meth:`RoundDriver.client_epsilon`)."""
        if reported is not None:
            self.worst_client_eps = max(self.worst_client_eps or 0.0, reported)
        bound = self.client_bound(self.budget.most()) if self.client_bound is not None else None
        return max((e for e in (self.worst_client_eps, bound) if e is not None), default=None)
