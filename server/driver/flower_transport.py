"""The driver's transport over Flower's ``Grid``: train tasks become Messages, replies come back.

The client key of a reply is the node it came from (``"node-<id>"``: the SuperNode the SuperLink
authenticated), never a number the client reports. A simulation, whose virtual SuperNodes stand for
partitions, maps nodes to ``"client-<partition id>"`` so that sampling and seeds match the
in-process engine: from the mapping the simulation engine recorded (``names``), else with one query
per node.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from stamen.protocols import SignatureError, is_model_hash, keys
from stamen.protocols.flower import array_record_nbytes, envelope_from_record, envelope_record
from stamen.protocols.patch import ModelPatch
from stamen.server.driver.identity import NodeIdentities
from stamen.server.driver.types import Reply, TrainTask, Weights, client_index
from stamen.task.bristle.peer import PeerConfig
from stamen.task.bristle.relayed import Relayed

log = logging.getLogger("stamen.server")


def wait_for_nodes(grid: Grid, wanted: int, minimum: int, timeout_s: float) -> list[int]:
    """Wait (bounded) until ``wanted`` nodes are connected; settle for ``minimum`` at the deadline.

    Raises ``RuntimeError`` when fewer than ``minimum`` nodes connected within ``timeout_s``.
    """
    deadline, next_log = time.monotonic() + timeout_s, time.monotonic() + 5.0
    while len(nodes := sorted(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        if time.monotonic() >= next_log:
            log.info("waiting for nodes: %d of %d connected", len(nodes), wanted)
            next_log += 5.0
        time.sleep(0.1)
    if len(nodes) < minimum:
        raise RuntimeError(f"only {len(nodes)} nodes connected within {timeout_s} s; need {minimum}")
    if len(nodes) < wanted:
        log.warning("proceeding with %d of %d expected nodes", len(nodes), wanted)
    return nodes


class GridTransport:
    """Send train tasks through ``grid`` and turn the replies into :class:`Reply` objects.

    Parameters
    ----------
    grid : Grid
        The run's grid (simulation or deployment).
    wanted, minimum : int
        Nodes to wait for before round 1, and the fewest to proceed with.
    wait_s : float
        How long to wait for them.
    query_names : bool
        Ask every node once for the client key it names in its envelopes (simulation); otherwise a
        node is ``"node-<node id>"``.
    bind_identity : bool
        Bind every reply to the key its authenticated node endorsed (a deployment with SuperNode
        authentication): the reply's envelope must be signed with that key.
    names : callable, optional
        ``names(nodes) -> {node: client key}`` known without a round trip (a simulation engine's
        node -> partition mapping); ``None`` from it falls back to ``query_names``.
    """

    def __init__(
        self,
        grid: Grid,
        wanted: int,
        minimum: int,
        wait_s: float,
        query_names: bool = False,
        bind_identity: bool = False,
        names: Callable[[Sequence[int]], Mapping[int, str] | None] | None = None,
    ) -> None:
        self.grid, self.wanted, self.minimum, self.wait_s = grid, wanted, minimum, wait_s
        self.query_names, self.names = query_names, names
        self.identities = NodeIdentities(grid.get_nodes) if bind_identity else None
        self._node_of: dict[str, int] = {}
        self._key_of: dict[int, str] = {}

    def clients(self) -> list[str]:
        """Connected clients, ordered by the number in their key."""
        nodes = (
            wait_for_nodes(self.grid, self.wanted, self.minimum, self.wait_s) if not self._key_of else None
        )
        if nodes is None:
            nodes = sorted(self.grid.get_node_ids())
        unknown = [n for n in nodes if n not in self._key_of]
        if unknown:
            self._learn(unknown)
        return sorted((self._key_of[n] for n in nodes if n in self._key_of), key=client_index)

    def _learn(self, nodes: list[int]) -> None:
        known = self.names(nodes) if self.names is not None else None
        if known is not None:
            self._remember({n: known[n] for n in nodes if n in known})
            return
        if not self.query_names:
            self._remember({n: f"node-{n}" for n in nodes})
            return
        msgs = [
            Message(
                RecordDict({keys.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY
            )
            for n in nodes
        ]
        names: dict[int, str] = {}
        for r in self.grid.send_and_receive(msgs, timeout=self.wait_s):
            conf = None if r.has_error() else r.content.config_records.get(keys.CONFIG)
            if conf is not None and isinstance(conf.get(keys.SENDER), str):
                names[r.metadata.src_node_id] = str(conf[keys.SENDER])
        self._remember(names)

    def _remember(self, names: dict[int, str]) -> None:
        for node, key in names.items():
            self._node_of[key], self._key_of[node] = node, key

    def train(self, tasks: Sequence[TrainTask], timeout: float) -> list[Reply]:
        """One Message per task; the replies that arrived within ``timeout`` seconds."""
        arrays = arrays_of_tasks(tasks)
        msgs = [
            Message(
                content_of(t, arrays), dst_node_id=self._node_of[t.client], message_type=MessageType.TRAIN
            )
            for t in tasks
        ]
        replies = list(self.grid.send_and_receive(msgs, timeout=timeout))
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}  # ids set when pushed
        return [self._reply(m, asked.get(m.metadata.reply_to_message_id)) for m in replies]

    def now(self) -> float:
        """A deployment has no simulated clock."""
        return math.nan

    def node_of(self, client: str) -> int:
        """The node id behind ``client``."""
        return self._node_of[client]

    def _reply(self, msg: Message, asked: int | None = None) -> Reply:
        """``asked``: the node the answered message went to. An error the SuperLink wrote itself (a
        node that went away) comes from the SuperLink's own id, and is the asked node's."""
        node = msg.metadata.src_node_id
        if msg.has_error():
            node = asked if asked is not None else node
            return Reply(self._key_of.get(node, f"node-{node}"), error=str(msg.error.reason))
        client = self._key_of.get(node, f"node-{node}")
        return self.bind(node, reply_of(client, msg.content), msg.content)

    def bind(self, node: int, reply: Reply, content: RecordDict) -> Reply:
        """Attach the verifier of the key node ``node`` endorsed (when binding identities)."""
        if self.identities is not None and reply.envelope is not None:
            try:
                reply.verifier = self.identities.verifier(node, content)
            except SignatureError as exc:
                reply.identity_error = str(exc)
        return reply


def arrays_of_tasks(tasks: Sequence[TrainTask]) -> ArrayRecord | None:
    """The round's model as one ArrayRecord shared by every message (``None`` for edge downlinks)."""
    weights = next((t.weights for t in tasks if t.weights is not None), None)
    if weights is None:
        return None
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()})


def content_of(task: TrainTask, arrays: ArrayRecord | None) -> RecordDict:
    """The train message's records for ``task`` (``arrays``: the round's model, shared)."""
    records: dict[str, Any] = {keys.CONFIG: ConfigRecord(task.instructions.to_config())}
    if task.downlink is not None:
        records[keys.DOWNLINK] = envelope_record(task.downlink)
    elif arrays is not None and task.weights is not None:
        records[keys.ARRAYS] = arrays
    if task.patch is not None:
        records.update(patch_records(task.patch))
    relayed, peer = task.extra.get("relayed"), task.extra.get("peer")
    if isinstance(relayed, Relayed) and isinstance(peer, PeerConfig):
        inbox, conf = relayed.to_plain(peer)
        records[keys.PEER_INBOX] = ArrayRecord({k: Array(v) for k, v in inbox.items()})
        records[keys.PEER_CONFIG] = ConfigRecord(conf)
    return RecordDict(records)


def patch_records(patch: ModelPatch) -> dict[str, Any]:
    """The cached downlink's records: the patch's meta, and its arrays (none for a "cache" mark)."""
    fields = {
        keys.PATCH_KIND: patch.kind,
        keys.PATCH_BASE: patch.base_hash,
        keys.PATCH_TARGET: patch.target_hash,
    }
    meta = ConfigRecord(fields)
    arrays = patch.to_arrays()
    out: dict[str, Any] = {keys.PATCH_META: meta}
    if arrays:
        out[keys.PATCH] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return out


def reply_of(client: str, content: RecordDict) -> Reply:
    """A train reply's envelope (or plain arrays) and reported metrics."""
    records = content.metric_records
    metrics_rec = records.get(keys.METRICS) or next(iter(records.values()), None)
    metrics: dict[str, Any] = dict(metrics_rec.items()) if metrics_rec is not None else {}
    if (miss := content.config_records.get(keys.CACHE_MISS)) is not None:
        return Reply(client, metrics=metrics, error=f"cache miss: {miss.get(keys.CACHE_MISS_REASON, '')!s}")
    held = content.config_records.get(keys.HELD)
    if held is not None:
        digest = held.get("hash")
        if not isinstance(digest, str) or not is_model_hash(digest):
            return Reply(client, metrics=metrics, error=f"record {keys.HELD!r} needs a 64-hex 'hash'")
        return Reply(client, metrics=metrics, error="the device holds another model version", held=digest)
    if keys.UPDATE in content.array_records:
        data = envelope_from_record(content.array_records[keys.UPDATE])
        if data is None:
            return Reply(client, metrics=metrics, error=f"record {keys.UPDATE!r} holds no envelope")
        return Reply(client, envelope=data, metrics=metrics, nbytes=len(data))
    if keys.ARRAYS in content.array_records:
        rec = content.array_records[keys.ARRAYS]
        try:
            weights: Weights = {k: a.numpy() for k, a in rec.items()}
        except Exception as exc:  # a stock client's arrays that do not deserialize
            return Reply(client, metrics=metrics, error=f"plain reply arrays unreadable: {exc}")
        return Reply(client, weights=weights, metrics=metrics, nbytes=array_record_nbytes(rec))
    return Reply(client, metrics=metrics)
