"""``StamenStrategy``: thin Flower glue around the pure round logic in :mod:`stamen.server.rounds`.

Per round it sends the global model (a plain ``ArrayRecord`` named "arrays", so stock Flower
ClientApps can join) and a ``ConfigRecord`` with the task, the training spec and the codec spec;
it decodes every reply with the envelope's own codec spec, validates it, and aggregates with a pure
aggregator. Replies are sorted by the client-reported partition id before aggregation so results are
reproducible bit for bit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from stamen.client.core import client_seed
from stamen.protocols import keys, model_hash
from stamen.protocols.flower import ENVELOPE_STYPE, array_record_nbytes, envelope_from_record, envelope_record
from stamen.server.aggregators import Aggregator, create
from stamen.server.config import ServerConfig
from stamen.server.edge_downlink import EdgeSession
from stamen.server.history import ProgressFn, RoundRecord
from stamen.server.privacy.central import CentralDP
from stamen.server.rounds import AttackHook, RoundAggregator, ValidationPolicy, round_epsilon

log = logging.getLogger("stamen.server")
EvalFn = Callable[[dict[str, np.ndarray]], tuple[float, float]]


class StamenStrategy(Strategy):
    """Synchronous rounds: sample, send model + specs, decode, validate, aggregate, evaluate."""

    def __init__(
        self,
        cfg: ServerConfig,
        evaluate: EvalFn | None = None,
        progress: ProgressFn | None = None,
        policy: ValidationPolicy | None = None,
        aggregator: Aggregator | None = None,
        attack_factory: Callable[[int], AttackHook | None] | None = None,
        central_dp: CentralDP | None = None,
        edge: EdgeSession | None = None,
        client_accountant: Callable[[Sequence[str]], float] | None = None,
    ) -> None:
        self.client_accountant = client_accountant
        self.cfg = cfg
        self.edge = edge
        self.central_dp = central_dp
        self._worst_eps: float | None = None
        self.aggregator = aggregator or create(cfg.rule, **cfg.rule_params)
        self.attack_factory = attack_factory
        self.policy = policy or ValidationPolicy(max_norm=cfg.max_update_norm)
        self.evaluate_fn = evaluate
        self.progress = progress
        self.history: list[RoundRecord] = []
        self._node_of_partition: dict[int, int] | None = None
        self._round: dict[str, Any] = {}

    # ---- training ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send them the model, the task and the codec spec."""
        t0 = time.perf_counter()
        base = {k: a.numpy() for k, a in arrays.items()}
        nodes = self._select_nodes(server_round, grid)
        cfg = self._train_config(server_round, config)
        self._round = {"t0": t0, "base": base, "hash": model_hash(base), "asked": len(nodes), "expected": {}}
        if self.edge is not None:
            return self._edge_messages(server_round, base, cfg, grid, nodes)
        content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: cfg})
        self._round["bytes_down"] = array_record_nbytes(arrays) * len(nodes)
        return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]

    def _edge_messages(
        self, server_round: int, base: dict[str, np.ndarray], cfg: ConfigRecord, grid: Grid, nodes: list[int]
    ) -> list[Message]:
        """Edge devices get a signed delta against the version they hold, not the full weights."""
        assert self.edge is not None
        pid_of = {node: pid for pid, node in self._partition_map(grid, nodes).items()}
        cfg[keys.EDGE_ROOT], cfg[keys.EDGE_TRUST] = str(self.edge.root), str(self.edge.trust)
        msgs, total = [], 0
        for node in nodes:
            if node not in pid_of:
                raise RuntimeError(f"node {node} did not report a partition id; edge mode needs it")
            pid = pid_of[node]
            data, expected = self.edge.downlink.make_update(
                pid, base, server_round, seed=client_seed(self.cfg.seed, server_round, pid)
            )
            self._round["expected"][f"client-{pid}"] = expected
            total += len(data)
            content = RecordDict({keys.DOWNLINK: envelope_record(data), keys.CONFIG: cfg})
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._round["bytes_down"] = total
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode and validate each reply, then aggregate the accepted ones."""
        ra = self._collect(server_round, replies)
        new = ra.finish(self.cfg.server_lr)
        if ra.stats.client_epsilon is not None:
            self._worst_eps = max(self._worst_eps or 0.0, ra.stats.client_epsilon)
        metrics = train_metrics(ra)
        if new is None:
            log.warning("round %d: no update accepted; the model is unchanged", server_round)
            return None, metrics
        return ArrayRecord({k: _array(v) for k, v in new.items()}), metrics

    def _collect(self, server_round: int, replies: Iterable[Message]) -> RoundAggregator:
        """Decode and validate the round's replies (in partition order) into a RoundAggregator."""
        state = self._round
        hook = self.attack_factory(server_round) if self.attack_factory else None
        ra = RoundAggregator(
            state["base"],
            state["hash"],
            state["asked"],
            self.aggregator,
            self.policy,
            hook,
            self.central_dp,
            self.client_accountant,
        )
        for sender, expected in state["expected"].items():
            ra.expect_base(sender, expected)
        ordered = sorted(replies, key=_reply_order)
        for reply in ordered:
            self._accept(ra, reply)
        missing = state["asked"] - len(ordered)
        for _ in range(max(missing, 0)):
            ra.reject("unknown", "no reply before the timeout")
        state["stats"] = ra.stats
        return ra

    def _accept(self, ra: RoundAggregator, reply: Message) -> None:
        if reply.has_error():
            ra.reject(f"node-{reply.metadata.src_node_id}", f"client error: {reply.error.reason}")
            return
        content = reply.content
        records = content.metric_records
        metrics = records.get(keys.METRICS) or next(iter(records.values()), None)
        sender = f"node-{reply.metadata.src_node_id}"
        num = _number(metrics, keys.NUM_EXAMPLES)
        if num is None:
            ra.reject(sender, f"reply has no MetricRecord with a numeric {keys.NUM_EXAMPLES!r}")
            return
        loss, pid = _number(metrics, keys.TRAIN_LOSS), _number(metrics, keys.PARTITION_ID)
        eps = _number(metrics, keys.EPSILON)
        if eps is not None:
            ra.note_client_epsilon(eps)
        if loss is not None:
            ra.stats.train_loss.append(loss)
        if pid is not None:
            sender = f"client-{int(pid)}"
        if keys.UPDATE in content.array_records:
            data = envelope_from_record(content.array_records[keys.UPDATE])
            if data is None:
                ra.reject(sender, f"record {keys.UPDATE!r} holds no {ENVELOPE_STYPE} array")
            else:
                ra.add_envelope(sender, data, int(num))
        elif keys.ARRAYS in content.array_records and self.cfg.codec.is_dense():
            rec = content.array_records[keys.ARRAYS]
            try:
                weights = {k: a.numpy() for k, a in rec.items()}
            except Exception as exc:  # a stock client's arrays that do not deserialize
                ra.reject(sender, f"plain reply arrays unreadable: {exc}")
                return
            ra.add_weights(sender, weights, int(num), array_record_nbytes(rec))
        else:
            ra.reject(sender, f"reply has neither {keys.UPDATE!r} nor (dense codec) {keys.ARRAYS!r}")

    # ---- evaluation ----------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on a fraction of the clients (none by default)."""
        if self.cfg.eval_fraction <= 0:
            return []
        nodes = sorted(grid.get_node_ids())
        k = max(1, math.ceil(self.cfg.eval_fraction * len(nodes)))
        rng = np.random.default_rng([self.cfg.seed, server_round, 0xE7A1])
        chosen = sorted(int(i) for i in rng.choice(nodes, size=min(k, len(nodes)), replace=False))
        cfg = self._train_config(server_round, config)
        content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: cfg})
        return [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of the clients' local accuracy and loss."""
        acc, loss, total = 0.0, 0.0, 0
        for r in replies:
            if r.has_error() or keys.METRICS not in r.content.metric_records:
                continue
            m = r.content.metric_records[keys.METRICS]
            n, a, lo = (_number(m, k) for k in (keys.NUM_EXAMPLES, keys.EVAL_ACCURACY, keys.EVAL_LOSS))
            if n is None or a is None or lo is None or n <= 0:
                continue
            acc, loss, total = acc + a * n, loss + lo * n, total + int(n)
        if total == 0:
            return None
        return MetricRecord({"federated-accuracy": acc / total, "federated-loss": loss / total})

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Centralized evaluation (Flower's ``evaluate_fn``); also closes the round's record."""
        if server_round == 0:
            return None
        due = server_round % self.cfg.eval_every == 0 or server_round == self.cfg.rounds
        loss, acc = math.nan, math.nan
        if due and self.evaluate_fn is not None:
            loss, acc = self.evaluate_fn({k: a.numpy() for k, a in arrays.items()})
        self._close_round(server_round, acc, loss)
        return None if math.isnan(acc) else MetricRecord({"accuracy": acc, "loss": loss})

    def _close_round(self, server_round: int, acc: float, loss: float) -> None:
        st = self._round.get("stats")
        rec = RoundRecord(
            round=server_round,
            accuracy=acc,
            loss=loss,
            bytes_up=st.bytes_up if st else 0,
            bytes_down=int(self._round.get("bytes_down", 0)),
            epsilon=round_epsilon(st, self._worst_eps) if st else None,
            rejected=st.rejected if st else 0,
            wall_s=time.perf_counter() - self._round.get("t0", 0.0),
        )
        self.history.append(rec)
        if self.progress is not None:
            self.progress(rec)

    def summary(self) -> None:
        """Log the configuration."""
        log.info(
            "StamenStrategy: rule=%s codec=%s per_round=%d/%d",
            self.cfg.rule,
            self.cfg.codec.to_string(),
            self.cfg.per_round,
            self.cfg.num_clients,
        )

    # ---- helpers -------------------------------------------------------------------------------
    def _train_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        cfg = ConfigRecord(dict(config))
        cfg[keys.SERVER_ROUND] = server_round
        cfg[keys.SEED] = self.cfg.seed
        cfg[keys.CODEC_SPEC] = self.cfg.codec.to_string()
        cfg[keys.ERROR_FEEDBACK] = self.cfg.error_feedback
        cfg[keys.TASK] = self.cfg.task.to_json()
        cfg[keys.TRAIN] = self.cfg.train_for_round(server_round).to_json()
        return cfg

    def _select_nodes(self, server_round: int, grid: Grid) -> list[int]:
        nodes = wait_for_nodes(grid, self.cfg.num_clients, self.cfg.per_round, self.cfg.timeout_s)
        if self.cfg.per_round >= len(nodes) and self.edge is None:
            return nodes
        mapping = self._partition_map(grid, nodes)
        pids = self.cfg.cohort(server_round)
        chosen = [mapping[p] for p in pids if p in mapping]
        spare = [n for n in nodes if n not in set(chosen)]
        return sorted(chosen + spare[: self.cfg.per_round - len(chosen)])

    def _partition_map(self, grid: Grid, nodes: list[int]) -> dict[int, int]:
        """Ask every node once for its partition id, so sampling matches the in-process engine."""
        if self._node_of_partition is None:
            msgs = [
                Message(
                    RecordDict({keys.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY
                )
                for n in nodes
            ]
            mapping: dict[int, int] = {}
            for r in grid.send_and_receive(msgs, timeout=self.cfg.timeout_s):
                m = None if r.has_error() else r.content.metric_records.get(keys.METRICS)
                if m is not None and keys.PARTITION_ID in m:
                    mapping[int(m[keys.PARTITION_ID])] = r.metadata.src_node_id  # type: ignore[arg-type]
            self._node_of_partition = mapping
        return self._node_of_partition


def wait_for_nodes(grid: Grid, wanted: int, minimum: int, timeout_s: float) -> list[int]:
    """Wait (bounded) until ``wanted`` nodes are connected; settle for ``minimum`` at the deadline.

    Virtual SuperNodes register asynchronously, so round 1 can start before they are all there.
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


def train_metrics(ra: RoundAggregator) -> MetricRecord:
    """The round's training metrics Flower records (bytes up, accepted, rejected, mean train loss)."""
    loss = float(np.mean(ra.stats.train_loss)) if ra.stats.train_loss else math.nan
    return MetricRecord(
        {
            "bytes-up": ra.stats.bytes_up,
            "accepted": ra.stats.accepted,
            "rejected": ra.stats.rejected,
            "train-loss": loss,
        }
    )


def _number(record: MetricRecord | None, key: str) -> float | None:
    """A scalar metric as float, or None when absent or not a number (e.g. a list)."""
    if record is None or key not in record:
        return None
    value = record[key]
    return float(value) if isinstance(value, (int, float)) else None


def _reply_order(msg: Message) -> tuple[int, float, int]:
    if msg.has_error():
        return (1, 0.0, msg.metadata.src_node_id)
    for rec in msg.content.metric_records.values():
        if keys.PARTITION_ID in rec:
            return (0, float(rec[keys.PARTITION_ID]), msg.metadata.src_node_id)  # type: ignore[arg-type]
    return (0, math.inf, msg.metadata.src_node_id)


def _array(x: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(x, dtype=np.float32))
