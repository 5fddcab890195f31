"""One reply, checked: what a client reported, its update verified, decoded and validated.

Shared by the synchronous collector (:class:`~stamen.server.driver.collect.UpdateCollector`) and the
asynchronous loop, which checks each update against the model version it was computed from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stamen.protocols import (
    BaseModelMismatch,
    CodecError,
    MalformedUpdate,
    SignatureError,
    TensorInfo,
    ValidationError,
    Verifier,
    decode_expected,
    decode_update,
    keys,
)
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.staleness.errors import StalenessError

if TYPE_CHECKING:
    from stamen.server.driver.collect import CollectPolicy


class SenderMismatch(ValidationError):
    """The envelope names (or is signed by) another client than the one it came from."""


class VersionMismatch(ValidationError):
    """The envelope names a model version the server did not send this client (future, replayed)."""


REASONS = (
    (SenderMismatch, "sender"),
    (VersionMismatch, "version"),
    (SignatureError, "signature"),
    (MalformedUpdate, "malformed"),
    (BaseModelMismatch, "base_model"),
    (CodecError, "codec"),
    (StalenessError, "stale"),
    (ValidationError, "validation"),
)


def reason_of(exc: BaseException) -> str:
    """The rejection category of a stamen error (the operator metrics' ``reason`` label)."""
    return next((label for cls, label in REASONS if isinstance(exc, cls)), "other")


@dataclass
class Accepted:
    """A reply that passed every check: its float32 delta and what the client reported."""

    delta: Mapping[str, np.ndarray]
    examples: float
    norm: float
    epsilon: float | None = None
    loss: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def accept_reply(
    reply: Reply,
    task: TrainTask,
    base: Mapping[str, np.ndarray],
    table: tuple[TensorInfo, ...],
    policy: CollectPolicy,
    out: np.ndarray | None = None,
) -> Accepted:
    """Check ``reply`` to ``task`` (whose model was ``base``); raise a ``StamenError`` naming the
    first problem: a missing required metric, a non-finite or out-of-range reported number, a bad
    signature, another base, codec (refused undecoded), version or sender, a tensor table, dtype,
    value or norm that does not fit.
    ``out``, a ``(d,)`` float32 row, receives the flattened delta (written even when it is refused)."""
    for key in policy.require:
        if key not in reply.metrics:
            raise ValidationError(f"reply lacks {key!r}")
    examples = fedavg_weight(reply.metrics, task.instructions.train.private_reply)
    eps = reported_number(reply.metrics, keys.EPSILON)
    if eps is not None and eps < 0:
        raise ValidationError(f"reported epsilon must be >= 0, got {eps}")
    loss = reported_number(reply.metrics, keys.TRAIN_LOSS)
    delta, borrowed = _delta(reply, task, base, table, policy)
    if borrowed and out is None:
        out = np.empty(sum(t.size for t in table), dtype=np.float32)
    norm = validate_delta(delta, table, policy.max_norm, out)
    if borrowed:  # views into the reply's bytes: the delta is the row's copy, as decode_update's
        assert out is not None
        delta = row_views(out, table)
    extras = {k: v for k, v in reply.metrics.items() if isinstance(v, list)}
    return Accepted(delta, examples, norm, eps, loss, extras)


def fedavg_weight(metrics: Mapping[str, Any], private: bool) -> float:
    """A reply's FedAvg weight: its reported ``num-examples`` (a number > 0, else
    ``ValidationError``), or 1 when the round runs client-side DP (``TrainSpec.private_reply``):
    such a client's example count is private data, so every privatized update weighs the same and
    whatever it reports is ignored."""
    if private:
        return 1.0
    examples = reported_number(metrics, keys.NUM_EXAMPLES)
    if examples is None or examples <= 0:
        raise ValidationError(f"reply needs a numeric {keys.NUM_EXAMPLES!r} > 0, got {examples}")
    return examples


def _delta(
    reply: Reply,
    task: TrainTask,
    base: Mapping[str, np.ndarray],
    table: tuple[TensorInfo, ...],
    policy: CollectPolicy,
) -> tuple[Mapping[str, np.ndarray], bool]:
    """The reply's decoded delta, and whether it is read-only views into the reply's bytes."""
    if reply.envelope is not None:
        verifier = _verifier(reply, policy)
        instr = task.instructions
        expected = decode_expected(
            reply.envelope,
            codec=instr.codec,
            version=instr.version,
            sender=reply.client,
            expected_base=task.expected_base,
            expected_tensors=table,
            verifier=verifier,
            writable=False,
        )
        if expected is not None:  # the envelope is exactly what was asked for: its checks are met
            return expected[1], True
        envelope, delta = decode_update(  # the codec the server asked for, checked before decoding
            reply.envelope,
            verifier=verifier,
            expected_base=task.expected_base,
            expected_tensors=table,
            expected_codec=instr.codec,
        )
        if envelope.sender != reply.client:
            raise SenderMismatch(f"envelope names sender {envelope.sender!r}, it came from {reply.client!r}")
        if envelope.version != task.instructions.version:
            raise VersionMismatch(
                f"envelope names model version {envelope.version}, "
                f"the server sent {task.instructions.version}"
            )
        return delta, False
    if reply.weights is None:
        raise ValidationError(f"reply has neither {keys.UPDATE!r} nor {keys.ARRAYS!r}")
    if policy.verifier is not None or policy.require_signed or not policy.allow_plain:
        raise ValidationError("plain (unsigned, unencoded) replies are not accepted by this server")
    try:
        return {k: np.asarray(reply.weights[k], dtype=np.float32) - base[k] for k in base}, False
    except (KeyError, ValueError) as exc:
        raise ValidationError(f"plain reply does not match the model: {exc}") from exc


def row_views(row: np.ndarray, table: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    """Named tensor views of a ``(d,)`` row, in table order (no copy)."""
    out, offset = {}, 0
    for info in table:
        out[info.name] = row[offset : offset + info.size].reshape(info.shape)
        offset += info.size
    return out


def _verifier(reply: Reply, policy: CollectPolicy) -> Verifier | None:
    """The key the envelope must be signed with: the sending node's endorsed key, else the policy's
    trusted keys; ``SignatureError`` when signatures are required and there is none."""
    if reply.identity_error is not None:
        raise SignatureError(reply.identity_error)
    verifier = reply.verifier if reply.verifier is not None else policy.verifier
    if verifier is None and policy.require_signed:
        raise SignatureError("unsigned update: this server requires updates signed by the sending node")
    return verifier


def validate_delta(
    delta: Mapping[str, np.ndarray],
    table: tuple[TensorInfo, ...],
    max_norm: float,
    out: np.ndarray | None = None,
) -> float:
    """Check ``delta`` against ``table`` (names, shapes, float32, finite, ``max_norm`` if > 0); return
    its L2 norm. Raises :class:`ValidationError`.

    The tensors are copied, in table order, into ``out`` (a ``(d,)`` float32 row; a scratch row when
    None) and the norm is one float32 dot product over it. A finite sum of squares proves every value
    finite (an inf or NaN makes it inf or NaN), so the element-wise scan runs only when it is not
    (non-finite values, or an overflow)."""
    names = [t.name for t in table]
    if list(delta) != names and set(delta) != set(names):
        raise ValidationError(f"tensor names differ from the model: got {sorted(delta)[:5]}...")
    row = np.empty(sum(t.size for t in table), dtype=np.float32) if out is None else out
    offset = 0
    for info in table:
        arr = delta[info.name]
        if tuple(arr.shape) != info.shape:
            raise ValidationError(f"{info.name}: shape {arr.shape} != {info.shape}")
        if arr.dtype != np.float32:
            raise ValidationError(f"{info.name}: dtype {arr.dtype} != float32")
        row[offset : offset + info.size] = arr.reshape(-1)
        offset += info.size
    with np.errstate(over="ignore"):  # an overflowing norm is refused below
        norm = math.sqrt(float(np.dot(row, row)))
    if not math.isfinite(norm):
        bad = next((i.name for i in table if not np.all(np.isfinite(delta[i.name]))), None)
        raise ValidationError(f"{bad}: non-finite values" if bad else "update L2 norm overflows float32")
    if max_norm > 0 and norm > max_norm:
        raise ValidationError(f"update L2 norm {norm:.4g} exceeds bound {max_norm}")
    return norm


def reported_epsilon(metrics: Mapping[str, Any]) -> float | None:
    """A reply's reported ``epsilon`` when it is a valid one (a finite number >= 0), else None (absent
    or malformed: a number that cannot be trusted is not counted; :func:`accept_reply` refuses it)."""
    value = metrics.get(keys.EPSILON)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) and value >= 0 else None


def reported_number(metrics: Mapping[str, Any], key: str) -> float | None:
    """A reported scalar as float; None when absent; ``ValidationError`` when not a finite number."""
    if key not in metrics:
        return None
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"reported {key!r} is not a number: {value!r}")
    if not math.isfinite(float(value)):
        raise ValidationError(f"reported {key!r} is not finite: {value!r}")
    return float(value)
