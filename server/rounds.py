"""One server round as a pure object, shared by the Flower strategy and the in-process engine.

``verify -> unpack Envelope -> decode with the envelope's own codec spec -> validate (names, shapes,
dtype, finite, norm) -> stack -> aggregator -> server step``. A bad update is rejected with its reason,
logged and counted; the round goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stamen.protocols import StamenError, TensorInfo, ValidationError, Verifier, decode_update
from stamen.server.aggregators import Aggregator
from stamen.server.privacy.central import CentralDP

log = logging.getLogger("stamen.server")
PoolFn = Callable[[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]]  # base -> updates


@dataclass(frozen=True)
class ValidationPolicy:
    """What a decoded update must satisfy. ``max_norm = 0`` disables the L2-norm bound."""

    max_norm: float = 0.0
    verifier: Verifier | None = None

    def __post_init__(self) -> None:
        if self.max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables it), got {self.max_norm}")


@dataclass(frozen=True)
class AttackHook:
    """Simulated omniscient update attack: rows of ``malicious`` senders are replaced by
    ``attack(honest_rows, num_malicious, rng)`` just before (pre-)aggregation.

    ``pool`` (optional) trains the attackers' own updates from the round's base weights (e.g. FRL
    rank reversal pools rankings of malicious partitions that need not be in this round); an attack
    with ``uses_own_updates`` then gets those rows as ``own`` instead of the round's malicious rows.
    """

    attack: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    malicious: frozenset[str]
    rng: np.random.Generator
    pool: PoolFn | None = None


@dataclass
class RoundStats:
    """Per-round bookkeeping; bytes are ``len()`` of what was really received."""

    bytes_up: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epsilon: float | None = None  # central DP / RQM: cumulative ε after this round
    seen: list[str] = field(default_factory=list)  # every sender whose update arrived (accepted or not)
    client_epsilon: float | None = None  # largest ε any client of this round reported


def round_epsilon(stats: RoundStats, worst_client: float | None) -> float | None:
    """The ε a round reports: central DP's cumulative ε, else the largest client-reported ε so far
    (local DP, DP-SGD), else None (no DP)."""
    return stats.epsilon if stats.epsilon is not None else worst_client


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


def validate_delta(
    delta: Mapping[str, np.ndarray], table: tuple[TensorInfo, ...], policy: ValidationPolicy
) -> None:
    """Raise :class:`ValidationError` unless ``delta`` matches ``table`` and is finite and bounded."""
    names = [t.name for t in table]
    if list(delta) != names and set(delta) != set(names):
        raise ValidationError(f"tensor names differ from the model: got {sorted(delta)[:5]}...")
    sq = 0.0
    for info in table:
        arr = delta[info.name]
        if tuple(arr.shape) != info.shape:
            raise ValidationError(f"{info.name}: shape {arr.shape} != {info.shape}")
        if arr.dtype != np.float32:
            raise ValidationError(f"{info.name}: dtype {arr.dtype} != float32")
        if not np.all(np.isfinite(arr)):
            raise ValidationError(f"{info.name}: non-finite values")
        sq += float(np.dot(arr.ravel(), arr.ravel()))
    if policy.max_norm > 0 and np.sqrt(sq) > policy.max_norm:
        raise ValidationError(f"update L2 norm {np.sqrt(sq):.4g} exceeds bound {policy.max_norm}")


class RoundAggregator:
    """Collects the updates of one round into a preallocated stack and aggregates them.

    Parameters
    ----------
    base : mapping of str to ndarray
        Global weights the round started from (what the deltas apply to).
    base_hash : str
        ``model_hash(base)``; envelopes computed against another model are rejected.
    capacity : int
        Maximum number of updates (the number of clients asked).
    aggregator : Aggregator
        Pure rule over the ``(n, d)`` stack.
    policy : ValidationPolicy
        Norm bound and optional signature verifier.
    """

    def __init__(
        self,
        base: Mapping[str, np.ndarray],
        base_hash: str,
        capacity: int,
        aggregator: Aggregator,
        policy: ValidationPolicy,
        attack: AttackHook | None = None,
        dp: CentralDP | None = None,
        accountant: Callable[[Sequence[str]], float] | None = None,
    ) -> None:
        from stamen.protocols import tensor_table

        self.base = {k: np.asarray(v, dtype=np.float32) for k, v in base.items()}
        self.base_hash = base_hash
        self.table = tensor_table(self.base)
        dim = sum(t.size for t in self.table)
        self._stack = np.empty((max(capacity, 1), dim), dtype=np.float32)  # (n, d)
        self._weights: list[float] = []
        self._senders: list[str] = []
        self.aggregator = aggregator
        self.policy = policy
        self.attack = attack
        self.dp = dp
        self.accountant = accountant  # client-level mechanism accounted by the server (RQM)
        self.stats = RoundStats()
        self._expected_base: dict[str, str] = {}

    def expect_base(self, sender: str, base_hash: str) -> None:
        """``sender`` trained from a different base than ``self.base`` (an edge device's own
        weights after its delta downlink); check its envelope against that hash instead."""
        self._expected_base[sender] = base_hash

    def add_envelope(self, sender: str, data: bytes, num_examples: int) -> bool:
        """Decode, validate and stack one packed envelope; reject (and return False) on any error."""
        self.stats.bytes_up += len(data)
        self.stats.seen.append(sender)
        try:
            _, delta = decode_update(
                data,
                verifier=self.policy.verifier,
                expected_base=self._expected_base.get(sender, self.base_hash),
                expected_tensors=self.table,
            )
        except StamenError as exc:
            return self.reject(sender, f"{type(exc).__name__}: {exc}")
        return self._add(sender, delta, num_examples)

    def add_weights(
        self, sender: str, weights: Mapping[str, np.ndarray], num_examples: int, nbytes: int
    ) -> bool:
        """Accept a plain Flower reply (full local weights): the delta is ``weights - base``."""
        self.stats.bytes_up += nbytes
        try:
            delta = {k: np.asarray(weights[k], dtype=np.float32) - self.base[k] for k in self.base}
        except (KeyError, ValueError) as exc:
            return self.reject(sender, f"plain reply does not match the model: {exc}")
        return self._add(sender, delta, num_examples)

    def reject(self, sender: str, reason: str) -> bool:
        """Count and log a rejected update; the round goes on."""
        self.stats.rejected += 1
        self.stats.reasons.append(f"{sender}: {reason}")
        log.warning("rejected update from %s: %s", sender, reason)
        return False

    def _add(self, sender: str, delta: Mapping[str, np.ndarray], num_examples: int) -> bool:
        try:
            validate_delta(delta, self.table, self.policy)
        except ValidationError as exc:
            return self.reject(sender, f"ValidationError: {exc}")
        if num_examples <= 0:
            return self.reject(sender, f"num-examples must be > 0, got {num_examples}")
        n = len(self._weights)
        if n >= self._stack.shape[0]:
            return self.reject(sender, "more replies than clients asked")
        flatten(delta, self.table, self._stack[n])
        self._weights.append(float(num_examples))
        self._senders.append(sender)
        self.stats.accepted += 1
        return True

    def finish(self, server_lr: float = 1.0) -> dict[str, np.ndarray] | None:
        """Aggregate the accepted updates: ``w <- base + server_lr * agg(deltas)``; None if none."""
        n = len(self._weights)
        if self.accountant is not None:  # every message that arrived was released by its client
            self.stats.epsilon = self.accountant(self.stats.seen)
        if self.dp is not None:
            return self._finish_private(n, server_lr, self.dp)
        if n == 0:
            return None
        stack = self._stack[:n]
        self._bind(self.attack.attack if self.attack is not None else None)
        if self.attack is not None:
            self._apply_attack(stack, self.attack)
        self._bind(self.aggregator)
        agg = self.aggregator(stack, np.asarray(self._weights))
        step = unflatten(np.asarray(agg, dtype=np.float32) * np.float32(server_lr), self.table)
        return {k: self.base[k] + step[k] for k in self.base}

    def released(self) -> dict[str, dict[str, np.ndarray]]:
        """Relay instead of aggregate (Bristle's peer mode): every accepted sender's weights
        ``base + delta``, after the attack hook replaced the malicious senders' rows."""
        n = len(self._weights)
        stack = self._stack[:n]
        if self.attack is not None and n:
            self._bind(self.attack.attack)
            self._apply_attack(stack, self.attack)
        return {
            s: {k: self.base[k] + v for k, v in unflatten(stack[i], self.table).items()}
            for i, s in enumerate(self._senders)
        }

    def _bind(self, component: object) -> None:
        """Give rules/attacks that need the model layout and base (FRL's per-layer vote, rank
        reversal, LoRA's exact rule) the round's tensor table and flattened base weights."""
        bind = getattr(component, "bind_round", None)
        if bind is None:
            return
        base_flat = np.empty(self._stack.shape[1], dtype=np.float32)
        flatten(self.base, self.table, base_flat)
        bind(self.table, base_flat)

    def _finish_private(self, n: int, server_lr: float, dp: CentralDP) -> dict[str, np.ndarray]:
        """Central DP (DP-FedAvg): clip every row to C, aggregate, add calibrated Gaussian noise, and
        step the accountant. The round is released (and counted) even when no update was accepted."""
        from stamen.server.privacy.central import clip_rows

        stack = self._stack[:n]
        if self.attack is not None and n:
            self._apply_attack(stack, self.attack)
        clip_rows(stack, dp.clipping_norm)
        dim = self._stack.shape[1]
        agg = self.aggregator(stack, np.asarray(self._weights)) if n else np.zeros(dim, np.float32)
        agg = dp.privatize(agg, n, dp.sensitivity(self.aggregator))
        self.stats.epsilon = dp.step()
        step = unflatten(np.asarray(agg, dtype=np.float32) * np.float32(server_lr), self.table)
        return {k: self.base[k] + step[k] for k in self.base}

    def note_client_epsilon(self, epsilon: float) -> None:
        """Record a client-reported ε (local DP, DP-SGD); the round keeps the largest."""
        cur = self.stats.client_epsilon
        self.stats.client_epsilon = epsilon if cur is None else max(cur, epsilon)

    def _apply_attack(self, stack: np.ndarray, hook: AttackHook) -> None:
        """Overwrite the malicious senders' rows with the attack computed from the honest rows."""
        bad = [i for i, s in enumerate(self._senders) if s in hook.malicious]
        good = [i for i, s in enumerate(self._senders) if s not in hook.malicious]
        if not bad:
            return
        if not good:
            log.warning("every accepted update is malicious; the attack has no honest updates to use")
            return
        if getattr(hook.attack, "uses_own_updates", False):  # e.g. FRL rank reversal
            own = self._pooled(hook.pool) if hook.pool is not None else stack[bad].copy()
            forged = hook.attack(stack[good].copy(), len(bad), hook.rng, own=own)  # type: ignore[call-arg]
        else:
            forged = hook.attack(stack[good].copy(), len(bad), hook.rng)
        if forged.shape != (len(bad), stack.shape[1]):
            raise ValueError(f"attack returned shape {forged.shape}, expected {(len(bad), stack.shape[1])}")
        stack[bad] = forged

    def _pooled(self, pool: PoolFn) -> np.ndarray:
        """The attackers' pooled updates, trained from this round's base, as an ``(m, d)`` stack."""
        deltas = pool(self.base)
        own = np.empty((len(deltas), self._stack.shape[1]), dtype=np.float32)
        for row, delta in zip(own, deltas, strict=True):
            flatten(delta, self.table, row)
        return own
