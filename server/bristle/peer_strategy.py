"""``PeerStrategy``: the Flower strategy of Bristle's peer mode, a relay (see :mod:`.relay`).

Same sampling, config, decoding, validation and attack hook as :class:`StamenStrategy`; per node
the train message also carries its inbox (``bristle.inbox`` ArrayRecord + ``bristle.peer``
ConfigRecord), and instead of aggregating, the round's (attacked) layers become the next inboxes.
The global arrays never change (no global model); evaluation averages the honest nodes' layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from stamen.protocols import keys, model_hash
from stamen.protocols.flower import array_record_nbytes
from stamen.server.aggregators import Aggregator
from stamen.server.bristle.relay import PeerRelay, peer_config
from stamen.server.config import ServerConfig
from stamen.server.history import ProgressFn
from stamen.server.rounds import AttackHook, RoundAggregator
from stamen.server.strategy import StamenStrategy, train_metrics

EvalFn = Callable[[dict[str, np.ndarray]], tuple[float, float]]


def sender_pid(sender: str) -> int:
    """Partition id of a ``client-<id>`` sender (peer mode needs the id to relay)."""
    prefix, _, rest = sender.partition("-")
    if prefix != "client" or not rest.isdigit():
        raise ValueError(f"peer mode needs partition ids; got sender {sender!r}")
    return int(rest)


class PeerStrategy(StamenStrategy):
    """Relay the sampled nodes' shared layers round to round (Bristle peer mode)."""

    def __init__(
        self,
        cfg: ServerConfig,
        layer: str,
        num_classes: int,
        evaluate: EvalFn | None = None,
        progress: ProgressFn | None = None,
        aggregator: Aggregator | None = None,
        attack_factory: Callable[[int], AttackHook | None] | None = None,
    ) -> None:
        super().__init__(
            cfg,
            evaluate=self._evaluate_nodes if evaluate else None,
            progress=progress,
            aggregator=aggregator,
            attack_factory=attack_factory,
        )
        self.layer, self.central = layer, evaluate
        self.relay = PeerRelay(num_classes, cfg.malicious)
        self.peer_cfg = peer_config(self.aggregator)
        self._classes: dict[int, tuple[int, ...]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes; send each the (unchanged) initial arrays, the config and its inbox."""
        t0 = time.perf_counter()
        base = {k: a.numpy() for k, a in arrays.items()}
        nodes = self._select_nodes(server_round, grid)
        pid_of = {node: pid for pid, node in self._partition_map(grid, nodes).items()}
        cfg = self._train_config(server_round, config)
        self._round = {"t0": t0, "base": base, "hash": model_hash(base), "asked": len(nodes), "expected": {}}
        msgs, total = [], 0
        for node in nodes:
            if node not in pid_of:
                raise RuntimeError(f"node {node} did not report a partition id; peer mode needs it")
            inbox, peer = self.relay.outgoing(pid_of[node]).to_records(self.peer_cfg)
            content = RecordDict(
                {keys.ARRAYS: arrays, keys.CONFIG: cfg, keys.PEER_INBOX: inbox, keys.PEER_CONFIG: peer}
            )
            total += array_record_nbytes(arrays) + array_record_nbytes(inbox)
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._round["bytes_down"] = total
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode, validate, apply the attack hook, and keep the layers for the next round."""
        self._classes = {}
        ra = self._collect(server_round, replies)
        layers = {sender_pid(s): w[self.layer] for s, w in ra.released().items()}
        self.relay.receive(layers, {p: self._classes[p] for p in layers if p in self._classes})
        return None, train_metrics(ra)  # no global model: the arrays stay the initial ones

    def _accept(self, ra: RoundAggregator, reply: Message) -> None:
        """A peer-mode reply must carry its partition id and declared classes."""
        if not reply.has_error():
            metrics = reply.content.metric_records.get(keys.METRICS)
            pid = metrics.get(keys.PARTITION_ID) if metrics is not None else None
            classes: Any = metrics.get(keys.PEER_CLASSES) if metrics is not None else None
            if not isinstance(pid, int) or not isinstance(classes, list):
                ra.reject(
                    f"node-{reply.metadata.src_node_id}",
                    f"peer mode: reply lacks {keys.PARTITION_ID!r} or {keys.PEER_CLASSES!r}",
                )
                return
            self._classes[pid] = tuple(int(c) for c in classes)
        super()._accept(ra, reply)

    def _evaluate_nodes(self, weights: dict[str, np.ndarray]) -> tuple[float, float]:
        """Mean (loss, accuracy) of the honest nodes' consolidated layers (``weights`` unused)."""
        del weights
        assert self.central is not None
        central = self.central
        return self.relay.evaluate(lambda layer: central({self.layer: layer}))
