"""``stamen.client.app:app`` — the ClientApp (train, evaluate, query handlers).

Everything a client needs arrives with each message (task, training spec, codec spec), so the same
app serves simulations and deployments. The partition comes from ``context.node_config``
(``partition-id``, ``num-partitions``); in deployment pass them with ``--node-config``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from stamen.client.context_state import load_state, save_state
from stamen.client.core import client_seed, local_update
from stamen.client.models import evaluate_model, set_weights
from stamen.client.mods import DELTA, codec_mod, local_dp_mod, trained_record
from stamen.client.task import TaskSpec, TrainSpec, build_model, client_data
from stamen.protocols import keys
from stamen.protocols.flower import arrays_of, config_value, envelope_from_record

if TYPE_CHECKING:
    from stamen.client.bristle_peer import PeerReply
    from stamen.client.state import ClientState

torch.set_num_threads(1)  # one thread per simulated client (determinism, no oversubscription)

app = ClientApp()


@lru_cache(maxsize=2)
def _model(task: TaskSpec) -> nn.Module:
    return build_model(task)


def partition_id(context: Context) -> int:
    """The node's partition id, with a clear error when a deployment forgot ``--node-config``."""
    if keys.NODE_PARTITION_ID not in context.node_config:
        raise ValueError(
            "node_config has no 'partition-id': start the SuperNode with "
            "--node-config 'partition-id=N num-partitions=M'"
        )
    return config_value(context.node_config, keys.NODE_PARTITION_ID, int)


def _train(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[keys.CONFIG]
    task = TaskSpec.from_json(config_value(cfg, keys.TASK, str))
    spec = TrainSpec.from_json(config_value(cfg, keys.TRAIN, str))
    pid = partition_id(context)
    rnd, seed = config_value(cfg, keys.SERVER_ROUND, int), config_value(cfg, keys.SEED, int)
    base_hash: str | None = None
    if keys.DOWNLINK in msg.content.array_records:  # edge runtime: apply the signed delta first
        weights, base_hash = _edge_weights(msg, context, task)
    else:
        weights = arrays_of(msg.content, keys.ARRAYS)
    state = load_state(context)
    extra: dict[str, list[int]] = {}
    if keys.PEER_CONFIG in msg.content.config_records:  # Bristle peer mode: the server only relays
        reply = _peer_update(msg, task, spec, weights, state, (seed, rnd, pid))
        result, extra = reply.result, {keys.PEER_CLASSES: list(reply.classes)}
    else:
        result = local_update(
            _model(task), weights, client_data(task, pid), spec, client_seed(seed, rnd, pid), state
        )
    save_state(context, state)
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: result.num_examples, keys.PARTITION_ID: pid, **result.metrics, **extra}
    )
    delta = ArrayRecord({k: Array(v) for k, v in result.delta.items()})
    content = RecordDict({DELTA: delta, keys.METRICS: metrics, **trained_record(result.trained)})
    if base_hash is not None:
        content[keys.BASE] = ConfigRecord({"hash": base_hash})
    return Message(content, reply_to=msg)


def _peer_update(
    msg: Message,
    task: TaskSpec,
    spec: TrainSpec,
    weights: dict[str, np.ndarray],
    state: ClientState,
    who: tuple[int, int, int],
) -> PeerReply:
    """Bristle peer mode: integrate the relayed inbox, train, return the layer to share."""
    from stamen.client.bristle_peer import PeerRound, peer_update
    from stamen.server.bristle.relay import Relayed

    inbox = msg.content.array_records.get(keys.PEER_INBOX, ArrayRecord())
    relayed, cfg = Relayed.from_records(inbox, msg.content.config_records[keys.PEER_CONFIG])
    seed, rnd, pid = who
    return peer_update(
        _model(task), weights, client_data(task, pid), spec, state, relayed, PeerRound(seed, rnd, pid, cfg)
    )


def _edge_weights(msg: Message, context: Context, task: TaskSpec) -> tuple[dict[str, np.ndarray], str]:
    """The device applies the server's signed delta in its edge store; returns (weights, hash)."""
    from pathlib import Path

    from stamen.client.edge_device import apply_downlink, device_store

    cfg = msg.content.config_records[keys.CONFIG]
    root = context.node_config.get(keys.EDGE_ROOT) or config_value(cfg, keys.EDGE_ROOT, str)
    data = envelope_from_record(msg.content.array_records[keys.DOWNLINK])
    if data is None:
        raise ValueError(f"record {keys.DOWNLINK!r} holds no envelope")
    trust = Path(config_value(cfg, keys.EDGE_TRUST, str))
    rt = device_store(Path(str(root)), partition_id(context), task, trust)
    weights = apply_downlink(rt, data)
    return weights, rt.version().hash


def _evaluate(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[keys.CONFIG]
    task = TaskSpec.from_json(config_value(cfg, keys.TASK, str))
    pid = partition_id(context)
    model = _model(task)
    set_weights(model, arrays_of(msg.content, keys.ARRAYS))
    data = client_data(task, pid)
    loss, acc = evaluate_model(model, data.x, data.y)
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(data.y),
            keys.PARTITION_ID: pid,
            keys.EVAL_LOSS: loss,
            keys.EVAL_ACCURACY: acc,
        }
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)


def _query(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({keys.PARTITION_ID: partition_id(context)})
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)


app.train(mods=[codec_mod, local_dp_mod])(_train)
app.evaluate()(_evaluate)
app.query()(_query)
