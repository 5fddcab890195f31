"""Flower client mods for the train handler (registered per handler, never app-wide: Flower's own
DP mods break evaluate replies when set app-wide).

``codec_mod``: the handler replies with the plain delta in ``ArrayRecord "delta"``; the mod encodes it
with the codec spec the server asked for, packs it into an Envelope (signed if a signer is set) and
replaces the record by ``"update"``. Mods compose: ``mods[0]`` is outermost, so with
``[codec_mod, dp_mod]`` the reply passes the DP mod first, then the codec.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from stamen.client.context_state import load_state, save_state
from stamen.client.core import client_seed, encode_delta, local_privacy
from stamen.client.task import TrainSpec
from stamen.protocols import Signer, keys, model_hash
from stamen.protocols.flower import arrays_of, config_value, envelope_record

DELTA = "delta"  # handler -> mod record name; never leaves the client
TRAINED = "trained"  # handler -> mod ConfigRecord {"names": [...]}: TrainResult.trained; never leaves

Mod = Callable[[Message, Context, ClientAppCallable], Message]


def make_codec_mod(signer: Signer | None = None) -> Mod:
    """Build the codec mod; with ``signer`` every envelope is Ed25519-signed."""

    def codec_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, ctx)
        out = call_next(msg, ctx)
        if out.has_error() or DELTA not in out.content.array_records:
            return out
        base_hash = _base_hash(msg, out)
        cfg = msg.content.config_records[keys.CONFIG]
        delta = {k: v.astype(np.float32, copy=False) for k, v in arrays_of(out.content, DELTA).items()}
        metrics = out.content.metric_records[keys.METRICS]
        pid = config_value(metrics, keys.PARTITION_ID, int)
        rnd, seed = config_value(cfg, keys.SERVER_ROUND, int), config_value(cfg, keys.SEED, int)
        feedback = bool(cfg.get(keys.ERROR_FEEDBACK, False))
        state = load_state(ctx)
        payload = encode_delta(
            delta,
            config_value(cfg, keys.CODEC_SPEC, str),
            base_hash=base_hash,
            version=rnd,
            sender=f"client-{pid}",
            seed=client_seed(seed, rnd, pid) ^ 0xC0DEC,
            signer=signer,
            state=state,
            error_feedback=feedback,
        )
        if feedback:
            save_state(ctx, state)
        del out.content[DELTA]
        if TRAINED in out.content.config_records:
            del out.content[TRAINED]
        out.content[keys.UPDATE] = envelope_record(payload)
        metrics[keys.BYTES_UP] = len(payload)
        return out

    return codec_mod


codec_mod = make_codec_mod()


def _base_hash(msg: Message, out: Message) -> str:
    """Hash of the weights the client trained from: an edge device reports its store's hash (the
    server replays the device's arithmetic), otherwise it is the hash of the received arrays."""
    if keys.BASE in out.content.config_records:
        record = out.content.config_records[keys.BASE]
        del out.content[keys.BASE]
        return config_value(record, "hash", str)
    return model_hash(arrays_of(msg.content, keys.ARRAYS))


def local_dp_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Local DP on the train reply's delta, before the codec mod (``mods=[codec_mod, local_dp_mod]``)."""
    if msg.metadata.message_type.split(".")[0] != "train":
        return call_next(msg, ctx)
    out = call_next(msg, ctx)
    cfg = msg.content.config_records[keys.CONFIG]
    spec = TrainSpec.from_json(config_value(cfg, keys.TRAIN, str))
    if out.has_error() or not spec.local_dp or DELTA not in out.content.array_records:
        return out
    metrics = out.content.metric_records[keys.METRICS]
    pid = config_value(metrics, keys.PARTITION_ID, int)
    rnd, seed = config_value(cfg, keys.SERVER_ROUND, int), config_value(cfg, keys.SEED, int)
    state = load_state(ctx)
    delta, extra = local_privacy(
        arrays_of(out.content, DELTA), spec, client_seed(seed, rnd, pid), state, trained_names(out)
    )
    save_state(ctx, state)
    out.content[DELTA] = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in delta.items()})
    for key, value in extra.items():
        metrics[key] = value
    return out


def trained_names(out: Message) -> list[str] | None:
    """The handler's ``TrainResult.trained`` from the reply's ``TRAINED`` record (``None`` if absent)."""
    if TRAINED not in out.content.config_records:
        return None
    names = out.content.config_records[TRAINED]["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"record {TRAINED!r} must hold a list of tensor names")
    return [str(n) for n in names]


def trained_record(trained: tuple[str, ...] | None) -> dict[str, ConfigRecord]:
    """``{TRAINED: ConfigRecord}`` for a train reply (empty when the trainer did not declare a set)."""
    return {} if trained is None else {TRAINED: ConfigRecord({"names": list(trained)})}
