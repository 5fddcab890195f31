"""``stamen.client.app:app`` — the ClientApp a real federation runs (train, evaluate, query).

Everything about the round arrives with each message (task, training spec, codec); everything about
the node stays on the node: its data source, its edge store and its signing key come from its node
config (``--node-config 'data-source=... edge-store=... signing-key=... endorsement=...'``), never
from a message. A device signs every update with its ``signing-key`` and sends the key with its node
key's ``endorsement`` (made by ``stamen deploy init`` / ``stamen device init``), so the server binds the
signature to the node the SuperLink authenticated.
A simulation builds the same app around its own resolver (:func:`make_client_app`), which hands
each virtual client its partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from stamen.client import downlink_cache
from stamen.client.context_state import load_state, save_state
from stamen.client.core import reply_metrics
from stamen.client.mods import DELTA, make_codec_mod, make_local_dp_mod, trained_record
from stamen.client.node import DeviceHolds, Node, Received, Trained, train
from stamen.edge import EdgeRuntime
from stamen.protocols import Signer, keys
from stamen.protocols.flower import arrays_of, envelope_from_record
from stamen.protocols.patch import CacheMiss, ModelPatch
from stamen.task.bristle.relayed import Relayed
from stamen.task.datasource import data_source_spec, load_data_source
from stamen.task.local_base import local_base
from stamen.task.models import model_structure
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec
from stamen.task.weights import evaluate_model, set_weights

torch.set_num_threads(1)  # one thread per client process (determinism, no oversubscription)

Resolve = Callable[[Context], Node]
EDGE_STORE, SIGNING_KEY, ENDORSEMENT = "edge-store", "signing-key", "endorsement"  # node_config keys
ALLOW_SEEDED_DP = "allow-seeded-dp"  # node_config: follow a server asking for seeded client DP noise
log = logging.getLogger("stamen.client")


@lru_cache(maxsize=2)
def _model(task: TaskSpec) -> nn.Module:
    return model_structure(task)


def received(msg: Message) -> Received:
    """Decode a train message: the round's instructions, then full weights, a signed delta, or a
    Bristle inbox."""
    content = msg.content
    instr = RoundInstructions.from_config(content.config_records[keys.CONFIG])
    downlink = None
    if keys.DOWNLINK in content.array_records:
        downlink = envelope_from_record(content.array_records[keys.DOWNLINK])
        if downlink is None:
            raise ValueError(f"record {keys.DOWNLINK!r} holds no envelope")
    weights = arrays_of(content, keys.ARRAYS) if keys.ARRAYS in content.array_records else None
    if keys.PEER_CONFIG not in content.config_records:
        return Received(instr, weights, downlink)
    inbox = content.array_records.get(keys.PEER_INBOX, ArrayRecord())
    relayed, peer = Relayed.from_plain(
        {k: a.numpy() for k, a in inbox.items()}, content.config_records[keys.PEER_CONFIG]
    )
    return Received(instr, weights, downlink, relayed, peer)


def patch_of(content: RecordDict) -> ModelPatch | None:
    """The cached downlink's patch (or "cache" mark) in a train message, or None."""
    meta = content.config_records.get(keys.PATCH_META)
    if meta is None:
        return None
    names = (keys.PATCH_KIND, keys.PATCH_BASE, keys.PATCH_TARGET)
    fields = [meta.get(k) for k in names]
    if not all(isinstance(f, str) for f in fields):
        raise ValueError(f"record {keys.PATCH_META!r} needs str entries {names}")
    record = content.array_records.get(keys.PATCH, ArrayRecord())
    return ModelPatch.from_arrays(*(str(f) for f in fields), {k: a.numpy() for k, a in record.items()})


def cached_base(rec: Received, patch: ModelPatch | None, context: Context) -> Received:
    """``rec`` with the weights a cached downlink resolves to (kept in ``context.state``)."""
    if patch is None:
        return rec
    held, task = downlink_cache.load_held(context), rec.instructions.task
    digest, weights = downlink_cache.resolve(held, rec.weights, patch, lambda: local_base(task))
    downlink_cache.save_held(context, (digest, weights))
    return replace(rec, weights=weights, base_hash=digest)


def make_client_app(resolve: Resolve) -> ClientApp:
    """A ClientApp whose nodes are found by ``resolve(context)``."""
    app = ClientApp()

    def _train(msg: Message, context: Context) -> Message:
        return train_reply(resolve(context), msg, context)

    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_reply(resolve(context), msg)

    def _query(msg: Message, context: Context) -> Message:
        return query_reply(resolve(context), msg)

    app.train(mods=[make_codec_mod(resolve), make_local_dp_mod(resolve)])(_train)
    app.evaluate()(_evaluate)
    app.query()(_query)
    return app


def _reply(msg: Message, name: str, record: ConfigRecord) -> Message:
    """A reply to ``msg`` holding one config record."""
    return Message(RecordDict({name: record}), reply_to=msg)


def train_reply(node: Node, msg: Message, context: Context) -> Message:
    """``node``'s reply to a train message: its update, a downlink cache miss (the server then sends
    full weights), or the version a device holds (the delta was for another base)."""
    try:
        rec = cached_base(received(msg), patch_of(msg.content), context)
    except CacheMiss as miss:
        return _reply(msg, keys.CACHE_MISS, ConfigRecord({keys.CACHE_MISS_REASON: str(miss)}))
    state = load_state(context)
    try:
        done = train(node, rec, _model(rec.instructions.task), state)
    except DeviceHolds as held:
        return _reply(msg, keys.HELD, ConfigRecord({"hash": held.held_hash, "version": held.version}))
    save_state(context, state)
    return Message(update_content(done, rec.instructions.train), reply_to=msg)


def update_content(done: Trained, train_spec: TrainSpec) -> RecordDict:
    """The records of a train reply: the delta, the metrics, the base hash and what was trained."""
    res = done.result
    metrics = MetricRecord(reply_metrics(train_spec, res.num_examples, {**res.metrics, **done.metrics}))
    return RecordDict(
        {
            DELTA: ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in res.delta.items()}),
            keys.METRICS: metrics,
            keys.BASE: ConfigRecord({"hash": done.base_hash}),
            **trained_record(res.trained),
        }
    )


def evaluate_reply(node: Node, msg: Message) -> Message:
    """Loss and accuracy of the message's weights on ``node``'s training data (refused where the
    node runs client-side DP: it releases only its privatized update)."""
    instr = RoundInstructions.from_config(msg.content.config_records[keys.CONFIG])
    if instr.train.private_reply:
        raise ValueError(
            "this client runs client-side DP: it releases only its privatized update, not a loss "
            "or accuracy measured on its data (evaluate centrally instead)"
        )
    model = _model(instr.task)
    set_weights(model, arrays_of(msg.content, keys.ARRAYS))
    data = node.data.train()
    loss, acc = evaluate_model(model, data.x, data.y)
    metrics = {keys.NUM_EXAMPLES: len(data.y), keys.EVAL_LOSS: loss, keys.EVAL_ACCURACY: acc}
    return Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=msg)


def query_reply(node: Node, msg: Message) -> Message:
    """The key ``node`` names in its envelopes (the server's query)."""
    return _reply(msg, keys.CONFIG, ConfigRecord({keys.SENDER: node.sender}))


def configured_node(context: Context) -> Node:
    """A deployed node: data, edge store and signing key from its node config (cached per node)."""
    node_cfg = tuple(sorted((str(k), str(v)) for k, v in context.node_config.items()))
    run_cfg = tuple(sorted((str(k), str(v)) for k, v in context.run_config.items()))
    return _configured(int(context.node_id), node_cfg, run_cfg)


@lru_cache(maxsize=8)
def _configured(
    node_id: int, node_cfg: tuple[tuple[str, str], ...], run_cfg: tuple[tuple[str, str], ...]
) -> Node:
    node_config, run_config = dict(node_cfg), dict(run_cfg)
    data = load_data_source(data_source_spec(node_config, run_config), node_config, run_config)
    store = _open_store(Path(node_config[EDGE_STORE])) if EDGE_STORE in node_config else None
    signer = Signer.from_file(node_config[SIGNING_KEY]) if SIGNING_KEY in node_config else None
    endorsement = Path(node_config[ENDORSEMENT]).read_bytes() if ENDORSEMENT in node_config else None
    if endorsement is not None and signer is None:
        raise ValueError(f"node config has {ENDORSEMENT!r} but no {SIGNING_KEY!r}")
    seeded_dp = node_config.get(ALLOW_SEEDED_DP, "false").strip().lower() == "true"
    return Node(data, f"node-{node_id}", node_id, store, signer, endorsement, seeded_dp)


def _open_store(path: Path) -> EdgeRuntime:
    """The node's edge store, repaired as the device daemon repairs it at start (a corrupt current
    version replaced by the newest intact retained one, logged): a SuperNode whose ClientApp starts
    again after the files rotted takes part at once instead of refusing every round."""
    store = EdgeRuntime.open(path, repair=True)
    if store.repaired is not None:
        log.warning("edge store %s repaired: %s", path, store.repaired)
    return store


app = make_client_app(configured_node)
