"""``inprocess`` engine: the whole federation in one process, no per-client process or message.

pfl-research style: one model object reused by every client, the round's update stack preallocated
(:class:`~stamen.server.rounds.RoundAggregator`), data partitions cached. It runs exactly the same
trainer (:func:`stamen.client.core.local_update`), codec (:func:`stamen.client.core.encode_delta`,
real packed envelopes whose ``len()`` is counted) and server code (decode, validate, aggregate) as
the Flower apps; only the transport is skipped. Sampling and seeds match the Flower engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from stamen.client.core import client_seed, encode_delta, local_privacy, local_update
from stamen.client.edge_device import apply_downlink, device_store, task_model_id
from stamen.client.models import get_weights
from stamen.client.state import ClientState
from stamen.client.task import build_model, client_data
from stamen.protocols import model_hash
from stamen.protocols.flower import weights_nbytes
from stamen.server.aggregators import Aggregator
from stamen.server.bristle.relay import EVALUATION
from stamen.server.config import ServerConfig
from stamen.server.edge_downlink import EdgeSession
from stamen.server.federation import (
    FederationResult,
    make_aggregator,
    make_central_dp,
    make_central_evaluator,
    make_rqm_accountant,
)
from stamen.server.history import ProgressFn, RoundRecord
from stamen.server.privacy.central import CentralDP
from stamen.server.rounds import RoundAggregator, ValidationPolicy, round_epsilon
from stamen.simulations.adversary import AttackFactory, attack_factory
from stamen.simulations.engines.inprocess_peer import evaluate_peers, peer_relay, peer_round

ClientProgressFn = Callable[[int, int], None]  # (clients done, clients in round)


@dataclass
class _Run:
    """What lives for the whole run (built once, reused every round)."""

    cfg: ServerConfig
    model: torch.nn.Module
    aggregator: Aggregator
    policy: ValidationPolicy
    attacks: AttackFactory | None
    central_dp: CentralDP | None
    edge: EdgeSession | None
    client_accountant: Callable[[Sequence[str]], float] | None
    states: dict[int, ClientState] = field(default_factory=dict)  # per-client memory across rounds
    worst_eps: float | None = None  # client-level DP: the largest ε any client has reported


def run_inprocess(
    cfg: ServerConfig,
    progress: ProgressFn | None = None,
    client_progress: ClientProgressFn | None = None,
) -> FederationResult:
    """Run ``cfg.rounds`` rounds in this process and return the per-round records."""
    torch.set_num_threads(1)  # same numerics as one-thread Flower clients
    model = build_model(cfg.task)
    weights = get_weights(model)
    edge = EdgeSession(weights, cfg.downlink, task_model_id(cfg.task)) if cfg.runtime == "edge" else None
    run = _Run(
        cfg,
        model,
        make_aggregator(cfg),
        ValidationPolicy(max_norm=cfg.max_update_norm),
        attack_factory(cfg),
        make_central_dp(cfg),
        edge,
        make_rqm_accountant(cfg),
    )
    evaluate = make_central_evaluator(cfg)
    relay = peer_relay(run.aggregator, cfg, weights)  # Bristle peer mode: the server only relays
    history: list[RoundRecord] = []
    try:
        for rnd in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            if relay is None:
                weights, ra, bytes_down = _round(run, weights, rnd, client_progress)
            else:  # no global model: the weights stay the initial ones
                ra, bytes_down = peer_round(run, relay, weights, rnd, client_progress)
            loss, acc = math.nan, math.nan
            if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
                loss, acc = evaluate(weights) if relay is None else evaluate_peers(relay, evaluate, weights)
            rec = RoundRecord(
                round=rnd,
                accuracy=acc,
                loss=loss,
                bytes_up=ra.stats.bytes_up,
                bytes_down=bytes_down,
                epsilon=round_epsilon(ra.stats, run.worst_eps),
                rejected=ra.stats.rejected,
                wall_s=time.perf_counter() - t0,
            )
            history.append(rec)
            if progress is not None:
                progress(rec)
    finally:
        if edge is not None:
            edge.close()
    extra = {"evaluation": EVALUATION} if relay is not None else {}
    return FederationResult(rounds=history, weights=weights, extra=extra)


def _round(
    run: _Run, weights: dict[str, np.ndarray], rnd: int, client_progress: ClientProgressFn | None
) -> tuple[dict[str, np.ndarray], RoundAggregator, int]:
    """One round: every sampled client, then aggregation. Returns (new weights, stats, bytes down)."""
    cfg = run.cfg
    pids = cfg.cohort(rnd)
    base_hash = model_hash(weights)
    hook = run.attacks(rnd) if run.attacks else None
    ra = RoundAggregator(
        weights, base_hash, len(pids), run.aggregator, run.policy, hook, run.central_dp, run.client_accountant
    )
    bytes_down = 0 if run.edge else weights_nbytes(weights) * len(pids)
    for i, pid in enumerate(pids):
        start, start_hash = weights, base_hash
        if run.edge is not None:  # the device applies a signed delta and trains from what it holds
            start, start_hash, nbytes = _edge_downlink(run.edge, cfg, weights, rnd, pid, ra)
            bytes_down += nbytes
        state = run.states.setdefault(pid, ClientState())
        _client_round(cfg, run.model, start, start_hash, rnd, pid, ra, state)
        if client_progress is not None:
            client_progress(i + 1, len(pids))
    new = ra.finish(cfg.server_lr)
    run.worst_eps = _max(run.worst_eps, ra.stats.client_epsilon)
    return (new if new is not None else weights), ra, bytes_down


def _edge_downlink(
    edge: EdgeSession,
    cfg: ServerConfig,
    weights: dict[str, np.ndarray],
    rnd: int,
    pid: int,
    ra: RoundAggregator,
) -> tuple[dict[str, np.ndarray], str, int]:
    """Server makes the device's signed delta; the device applies it in its store."""
    envelope, expected = edge.downlink.make_update(pid, weights, rnd, seed=client_seed(cfg.seed, rnd, pid))
    rt = device_store(edge.root, pid, cfg.task, edge.trust)
    held = apply_downlink(rt, envelope)
    device_hash = rt.version().hash
    if device_hash != expected:
        raise RuntimeError(f"device {pid} holds {device_hash[:12]}, the server expected {expected[:12]}")
    ra.expect_base(f"client-{pid}", device_hash)
    return held, device_hash, len(envelope)


def _client_round(
    cfg: ServerConfig,
    model: torch.nn.Module,
    weights: dict[str, np.ndarray],
    base_hash: str,
    rnd: int,
    pid: int,
    ra: RoundAggregator,
    state: ClientState,
) -> None:
    """One client: train, encode to a real envelope, hand the bytes to the server-side decoder."""
    seed = client_seed(cfg.seed, rnd, pid)
    spec = cfg.train_for_round(rnd)
    result = local_update(model, weights, client_data(cfg.task, pid), spec, seed, state)
    delta, dp_metrics = local_privacy(result.delta, spec, seed, state, result.trained)
    metrics = {**result.metrics, **dp_metrics}
    if "epsilon" in metrics:
        ra.note_client_epsilon(metrics["epsilon"])
    payload = encode_delta(
        delta,
        cfg.codec.to_string(),
        base_hash=base_hash,
        version=rnd,
        sender=f"client-{pid}",
        seed=seed ^ 0xC0DEC,
        state=state,
        error_feedback=cfg.error_feedback,
    )
    if "train-loss" in metrics:
        ra.stats.train_loss.append(metrics["train-loss"])
    ra.add_envelope(f"client-{pid}", payload, result.num_examples)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
