"""Collect one round's replies: verify, decode, validate and stack them; reject, count and go on.

Per reply (:meth:`UpdateCollector.add`, which never raises): the client must have been asked this
round and reply once; its reported numbers must be finite (``num-examples > 0``, ignored and taken as
1 under client-side DP, whose example counts are private; ``epsilon >= 0``); an
envelope is verified before parsing (when a verifier is set), must name the base the server expects
and the version it sent, and must be signed by — and name — the client it came from; a plain Flower
reply (full weights) is accepted only without a verifier and with a dense codec. The decoded delta
must match the model's tensor table, be float32, finite and within the norm bound. Anything else is
a counted rejection with its reason; the round goes on.

Privacy (``RoundStats``): ``seen`` charges (RQM) every task once, whatever becomes of it, plus every
surplus reply carrying an update (a second one, one not asked this round), to the client the transport
received it from; ``client_epsilon`` is the largest valid ε any reply carrying an update reported,
its update accepted or not (docs/algorithms.md, "What the accountant counts").

Per round (:meth:`UpdateCollector.finish`): clients that did not reply count as rejected; with no
absolute norm bound, a row whose L2 norm exceeds ``norm_ratio`` times the round's median norm is
rejected (a single 1e30 update cannot move the model); reported example counts are capped (FedAvg
trusts them only up to the client's declared partition size, or a fixed maximum, or
``examples_ratio`` times the round's median).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stamen.protocols import StamenError, TensorInfo, Verifier, tensor_table
from stamen.server.driver.reply import Accepted, accept_reply, reason_of, reported_epsilon
from stamen.server.driver.types import Reply, TrainTask, Weights

log = logging.getLogger("stamen.server")


@dataclass(frozen=True)
class CollectPolicy:
    """What a reply must satisfy.

    Attributes
    ----------
    max_norm : float
        Absolute L2 bound on a decoded update (``aggregation.max_update_norm``); 0 = use the
        adaptive bound below.
    norm_ratio : float
        Adaptive bound: reject a row whose norm exceeds ``norm_ratio`` times the round's median norm
        (needs >= 3 rows; 0 disables). Default 100. A run's policy sets 0 under central DP
        (:func:`stamen.server.federation.collect_policy`): one client would move the others' verdicts.
    max_examples : int
        Cap on a reported ``num-examples``; 0 = ``examples_ratio`` times the round's median.
    examples_ratio : float
        Adaptive cap (used when neither ``declared`` nor ``max_examples`` applies). Default 10.
    declared : mapping or None
        Each client's true example count when the server knows it (a simulation's partition sizes):
        the cap for that client.
    verifier : Verifier or None
        When set, every update must be an envelope signed by a trusted key.
    require_signed : bool
        Every update must be an envelope signed by the key its sending node endorsed (the reply's
        own verifier, set by a deployed grid's transport) or by ``verifier``. Default False.
    allow_plain : bool
        Accept plain Flower replies (full weights) — only meaningful with a dense codec.
    require : tuple of str
        Metric keys every reply must carry (Bristle's peer mode: the declared classes).
    """

    max_norm: float = 0.0
    norm_ratio: float = 100.0
    max_examples: int = 0
    examples_ratio: float = 10.0
    declared: Mapping[str, int] | None = None
    verifier: Verifier | None = None
    require_signed: bool = False
    allow_plain: bool = True
    require: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_norm", "norm_ratio", "max_examples", "examples_ratio"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


@dataclass
class RoundStats:
    """Per-round bookkeeping; bytes are ``len()`` of what was really received."""

    bytes_up: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # each rejection's category (metrics label)
    train_loss: list[float] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # messages charged: every task, every surplus update
    client_epsilon: float | None = None  # largest valid ε a client of this round reported


@dataclass
class CollectedUpdates:
    """The round's accepted updates: a ``(n, d)`` float32 stack (rows in cohort order), their FedAvg
    weights ``(n,)``, senders and per-sender extras, plus the model layout and base."""

    base: Weights
    table: tuple[TensorInfo, ...]
    stack: np.ndarray  # (n, d) view of the preallocated buffer
    weights: np.ndarray  # (n,) float64
    senders: list[str]
    extras: dict[str, dict[str, Any]]
    stats: RoundStats
    taus: list[int] = field(default_factory=list)  # staleness of each row (filled for stale rounds)
    trip_s: dict[str, float] = field(default_factory=dict)  # each sender's simulated trip (s), if timed

    def base_flat(self) -> np.ndarray:
        """The base weights as one ``(d,)`` float32 vector in table order."""
        out = np.empty(self.stack.shape[1], dtype=np.float32)
        flatten(self.base, self.table, out)
        return out

    def released(self) -> dict[str, Weights]:
        """Every accepted sender's weights ``base + delta`` (Bristle's peer mode relays them)."""
        return {
            s: {k: self.base[k] + v for k, v in unflatten(self.stack[i], self.table).items()}
            for i, s in enumerate(self.senders)
        }


def flatten(tensors: Mapping[str, np.ndarray], table: tuple[TensorInfo, ...], out: np.ndarray) -> None:
    """Write ``tensors`` into the preallocated ``(d,)`` row ``out`` in table order."""
    offset = 0
    for info in table:
        n = info.size
        out[offset : offset + n] = np.asarray(tensors[info.name], dtype=np.float32).reshape(-1)
        offset += n


def unflatten(flat: np.ndarray, table: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    """Split a ``(d,)`` vector back into named tensors (copies)."""
    out, offset = {}, 0
    for info in table:
        out[info.name] = flat[offset : offset + info.size].reshape(info.shape).astype(np.float32)
        offset += info.size
    return out


class UpdateCollector:
    """Collects one round's replies into a preallocated ``(len(tasks), d)`` stack.

    Parameters
    ----------
    base : mapping of str to ndarray
        Global weights of the round (what the deltas apply to); defines the tensor table.
    tasks : sequence of TrainTask
        What was sent, in cohort order (rows keep this order, whatever order replies came in).
    policy : CollectPolicy
        Norm and example-count bounds, signature verifier, plain replies.
    """

    def __init__(
        self, base: Mapping[str, np.ndarray], tasks: Sequence[TrainTask], policy: CollectPolicy
    ) -> None:
        self.base = {k: np.asarray(v, dtype=np.float32) for k, v in base.items()}
        self.table = tensor_table(self.base)
        self.policy = policy
        self.tasks = {t.client: t for t in tasks}
        self.order = {t.client: i for i, t in enumerate(tasks)}
        dim = sum(t.size for t in self.table)
        self._stack = np.empty((max(len(tasks), 1), dim), dtype=np.float32)  # (n, d)
        self._rows: dict[str, tuple[int, float, float]] = {}  # client -> (row, examples, norm)
        self._extras: dict[str, dict[str, Any]] = {}
        self._replied: set[str] = set()
        self._trips: dict[str, float] = {}
        self.stats = RoundStats()

    def add(self, reply: Reply) -> bool:
        """Verify, decode, validate and stack one reply; a bad one is rejected and counted (never
        raises)."""
        client = reply.client
        if client not in self.tasks or client in self._replied:
            return self._surplus(reply)
        self._replied.add(client)
        self.stats.bytes_up += reply.nbytes
        if reply.error is not None:
            return self.reject(client, f"client error: {reply.error}", "reply_error")
        self.note_epsilon(reply)  # its client's report of its spend, whatever becomes of the update
        try:
            examples, norm = self._accept(client, reply)
        except StamenError as exc:
            return self.reject(client, f"{type(exc).__name__}: {exc}", reason_of(exc))
        except Exception as exc:  # any per-reply failure is the client's, never the run's
            log.exception("unexpected failure decoding the reply of %s", client)
            return self.reject(client, f"unreadable reply ({type(exc).__name__}: {exc})")
        self._rows[client] = (len(self._rows), examples, norm)
        self._trips[client] = reply.trip_s
        self.stats.accepted += 1
        return True

    def _surplus(self, reply: Reply) -> bool:
        """A reply beyond the round's tasks: from a client not asked this round (a late reply of an
        earlier round) or a second one. Carrying an update, it is a message its client released:
        charged (``seen``) on top of the task and its reported ε counted; then rejected."""
        if reply.error is None:
            self.stats.seen.append(reply.client)
            self.note_epsilon(reply)
        if reply.client not in self.tasks:
            return self.reject(reply.client, "not asked this round", "other")
        return self.reject(reply.client, "second reply in one round", "duplicate")

    def note_epsilon(self, reply: Reply) -> None:
        """Count the ε a reply reports (local DP, DP-SGD) when it is valid, accepted update or not."""
        eps = reported_epsilon(reply.metrics)
        if eps is not None:
            cur = self.stats.client_epsilon
            self.stats.client_epsilon = eps if cur is None else max(cur, eps)

    def _accept(self, client: str, reply: Reply) -> tuple[float, float]:
        got = accept_reply(
            reply, self.tasks[client], self.base, self.table, self.policy, self._stack[len(self._rows)]
        )
        self.note(got)
        self._extras[client] = got.extras
        return got.examples, got.norm

    def note(self, got: Accepted) -> None:
        """Count an accepted reply's training loss (its ε was counted on arrival)."""
        if got.loss is not None:
            self.stats.train_loss.append(got.loss)

    def reject(self, client: str, reason: str, kind: str = "other") -> bool:
        """Count and log a rejected update (``kind``: its category); the round goes on."""
        self.stats.rejected += 1
        self.stats.reasons.append(f"{client}: {reason}")
        self.stats.kinds.append(kind)
        log.warning("rejected update from %s: %s", client, reason)
        return False

    def finish(self) -> CollectedUpdates:
        """Count missing replies, apply the round-level bounds, and return the accepted updates in
        cohort order."""
        for client in self.tasks:
            if client not in self._replied:
                self.reject(client, "no reply before the timeout", "timeout")
        self.stats.seen.extend(self.tasks)  # each task: at most one message, whatever became of it
        self._drop_outliers()
        clients = sorted(self._rows, key=self.order.__getitem__)
        rows = [self._rows[c][0] for c in clients]
        n = len(rows)
        if rows != list(range(n)):  # compact into cohort order
            self._stack[:n] = self._stack[rows]
        weights = np.asarray(self._capped([self._rows[c][1] for c in clients], clients), dtype=np.float64)
        extras = {c: self._extras.get(c, {}) for c in clients}
        trips = {c: self._trips[c] for c in clients}
        return CollectedUpdates(
            self.base, self.table, self._stack[:n], weights, clients, extras, self.stats, trip_s=trips
        )

    def _drop_outliers(self) -> None:
        clients = list(self._rows)
        norms = [self._rows[c][2] for c in clients]
        for client, reason in norm_outliers(clients, norms, self.policy).items():
            del self._rows[client]
            self.stats.accepted -= 1
            self.reject(client, reason, "validation")

    def _capped(self, counts: list[float], clients: list[str]) -> list[float]:
        return capped_examples(counts, clients, self.policy)


def norm_outliers(clients: Sequence[str], norms: Sequence[float], policy: CollectPolicy) -> dict[str, str]:
    """``client -> reason`` for the updates above ``norm_ratio`` x the median norm of a round (or
    buffer) of >= 3 updates; empty with an absolute bound or ``norm_ratio = 0``."""
    ratio = policy.norm_ratio
    if policy.max_norm > 0 or ratio <= 0 or len(norms) < 3:
        return {}
    median = float(np.median(norms))
    if median <= 0:
        return {}
    return {
        c: f"update L2 norm {n:.4g} exceeds {ratio:g} x the round's median {median:.4g}"
        for c, n in zip(clients, norms, strict=True)
        if n > ratio * median
    }


def capped_examples(counts: Sequence[float], clients: Sequence[str], policy: CollectPolicy) -> list[float]:
    """Reported example counts as FedAvg trusts them: at most the client's declared count, else
    ``max_examples``, else ``examples_ratio`` x the median of ``counts``."""
    if policy.declared is not None:
        return [min(n, float(policy.declared.get(c, n))) for n, c in zip(counts, clients, strict=True)]
    cap = float(policy.max_examples)
    if cap <= 0 and policy.examples_ratio > 0 and counts:
        cap = policy.examples_ratio * float(np.median(counts))
    return [min(n, cap) for n in counts] if cap > 0 else list(counts)
