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
from collections.abc import Callable

import numpy as np
import torch

from stamen.client.core import client_seed, encode_delta, local_privacy, local_update
from stamen.client.models import get_weights
from stamen.client.state import ClientState
from stamen.client.task import build_model, client_data
from stamen.protocols import model_hash
from stamen.protocols.flower import weights_nbytes
from stamen.server.config import ServerConfig
from stamen.server.federation import (
    FederationResult,
    make_aggregator,
    make_central_dp,
    make_central_evaluator,
)
from stamen.server.history import ProgressFn, RoundRecord
from stamen.server.rounds import RoundAggregator, ValidationPolicy, round_epsilon
from stamen.server.sampling import sample_clients
from stamen.simulations.adversary import attack_factory

ClientProgressFn = Callable[[int, int], None]  # (clients done, clients in round)


def run_inprocess(
    cfg: ServerConfig,
    progress: ProgressFn | None = None,
    client_progress: ClientProgressFn | None = None,
) -> FederationResult:
    """Run ``cfg.rounds`` rounds in this process and return the per-round records."""
    torch.set_num_threads(1)  # same numerics as one-thread Flower clients
    model = build_model(cfg.task)
    weights = get_weights(model)
    aggregator = make_aggregator(cfg)
    attacks = attack_factory(cfg)
    policy = ValidationPolicy(max_norm=cfg.max_update_norm)
    evaluate = make_central_evaluator(cfg)
    states: dict[int, ClientState] = {}  # per-client memory across rounds
    central_dp = make_central_dp(cfg)
    worst_eps: float | None = None  # client-level DP: the largest ε any client has reported
    history: list[RoundRecord] = []
    for rnd in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        pids = sample_clients(cfg.seed, rnd, cfg.num_clients, cfg.per_round)
        base_hash = model_hash(weights)
        hook = attacks(rnd) if attacks else None
        ra = RoundAggregator(weights, base_hash, len(pids), aggregator, policy, hook, central_dp)
        for i, pid in enumerate(pids):
            state = states.setdefault(pid, ClientState())
            _client_round(cfg, model, weights, base_hash, rnd, pid, ra, state)
            if client_progress is not None:
                client_progress(i + 1, len(pids))
        new = ra.finish(cfg.server_lr)
        worst_eps = _max(worst_eps, ra.stats.client_epsilon)
        weights = new if new is not None else weights
        loss, acc = math.nan, math.nan
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            loss, acc = evaluate(weights)
        rec = RoundRecord(
            round=rnd, accuracy=acc, loss=loss, bytes_up=ra.stats.bytes_up,
            bytes_down=weights_nbytes(ra.base) * len(pids), epsilon=round_epsilon(ra.stats, worst_eps),
            rejected=ra.stats.rejected, wall_s=time.perf_counter() - t0,
        )
        history.append(rec)
        if progress is not None:
            progress(rec)
    return FederationResult(rounds=history, weights=weights)


def _client_round(
    cfg: ServerConfig, model: torch.nn.Module, weights: dict[str, np.ndarray], base_hash: str,
    rnd: int, pid: int, ra: RoundAggregator, state: ClientState,
) -> None:
    """One client: train, encode to a real envelope, hand the bytes to the server-side decoder."""
    seed = client_seed(cfg.seed, rnd, pid)
    result = local_update(model, weights, client_data(cfg.task, pid), cfg.train, seed, state)
    delta, dp_metrics = local_privacy(result.delta, cfg.train, seed, state)
    metrics = {**result.metrics, **dp_metrics}
    if "epsilon" in metrics:
        ra.note_client_epsilon(metrics["epsilon"])
    payload = encode_delta(
        delta, cfg.codec.to_string(), base_hash=base_hash, version=rnd,
        sender=f"client-{pid}", seed=seed ^ 0xC0DEC, state=state, error_feedback=cfg.error_feedback,
    )
    if "train-loss" in metrics:
        ra.stats.train_loss.append(metrics["train-loss"])
    ra.add_envelope(f"client-{pid}", payload, result.num_examples)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
