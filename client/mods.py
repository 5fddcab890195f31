"""Flower client mods for the train handler (registered per handler, never app-wide: Flower's own
DP mods break evaluate replies when set app-wide).

The handler replies with the plain delta in the ``ArrayRecord`` ``"delta"``; ``local_dp_mod`` clips and
noises it (local DP), then ``codec_mod`` encodes it with the codec the server asked for, packs it into
an Envelope — signed with the node's key when it has one — and replaces the record by ``"update"``.
Mods compose: ``mods[0]`` is outermost, so with ``[codec_mod, dp_mod]`` the reply passes the DP mod
first, then the codec. Both call the functions :func:`stamen.client.node.release` calls, with the
same seeds, so the ClientApp and the in-process engine send identical bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from stamen.client.context_state import load_state, save_state
from stamen.client.core import encode_delta, local_privacy
from stamen.client.node import Node, codec_seed
from stamen.protocols import Signer, keys
from stamen.protocols.flower import arrays_of, config_value, envelope_record
from stamen.task.seeds import client_seed
from stamen.task.spec import RoundInstructions

DELTA = "delta"  # handler -> mod record name; never leaves the client
TRAINED = "trained"  # handler -> mod ConfigRecord {"names": [...]}: TrainResult.trained; never leaves

Mod = Callable[[Message, Context, ClientAppCallable], Message]
Resolve = Callable[[Context], Node]


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == "train"


def make_codec_mod(resolve: Resolve) -> Mod:
    """The codec mod of a node found by ``resolve`` (its sender name, seed stream and signing key)."""

    def codec_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        out = call_next(msg, ctx)
        if not _is_train(msg) or out.has_error() or DELTA not in out.content.array_records:
            return out
        node = resolve(ctx)
        instr = RoundInstructions.from_config(msg.content.config_records[keys.CONFIG])
        delta = {k: v.astype(np.float32, copy=False) for k, v in arrays_of(out.content, DELTA).items()}
        state = load_state(ctx)
        payload = encode_delta(
            delta,
            instr.codec,
            base_hash=config_value(out.content.config_records[keys.BASE], "hash", str),
            version=instr.version,
            sender=node.sender,
            seed=codec_seed(instr.train, client_seed(instr.seed, instr.round, node.seed_id)),
            signer=node.signer,
            state=state,
            error_feedback=instr.error_feedback,
        )
        if instr.error_feedback:
            save_state(ctx, state)
        for name in (DELTA, TRAINED, keys.BASE):
            if name in out.content:
                del out.content[name]
        out.content[keys.UPDATE] = envelope_record(payload)
        if node.signer is not None and node.endorsement is not None:
            out.content[keys.IDENTITY] = identity_record(node.signer, node.endorsement)
        out.content.metric_records[keys.METRICS][keys.BYTES_UP] = len(payload)
        return out

    return codec_mod


def make_local_dp_mod(resolve: Resolve) -> Mod:
    """Local DP on the train reply's delta, before the codec mod (``mods=[codec_mod, dp_mod]``)."""

    def local_dp_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        out = call_next(msg, ctx)
        if not _is_train(msg) or out.has_error() or DELTA not in out.content.array_records:
            return out
        instr = RoundInstructions.from_config(msg.content.config_records[keys.CONFIG])
        if not instr.train.local_dp:
            return out
        node = resolve(ctx)
        state = load_state(ctx)
        seed = client_seed(instr.seed, instr.round, node.seed_id)
        delta, extra = local_privacy(
            arrays_of(out.content, DELTA), instr.train, seed, state, trained_names(out)
        )
        save_state(ctx, state)
        out.content[DELTA] = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in delta.items()})
        metrics = out.content.metric_records[keys.METRICS]
        for key, value in extra.items():
            metrics[key] = value
        return out

    return local_dp_mod


def identity_record(signer: Signer, endorsement: bytes) -> ConfigRecord:
    """The reply's identity record: the update key and its node's endorsement."""
    key = signer.public_key_bytes()
    return ConfigRecord({keys.IDENTITY_KEY: key, keys.IDENTITY_ENDORSEMENT: endorsement})


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
