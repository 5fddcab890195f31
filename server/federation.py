"""Run a whole federation on a Flower ``Grid``: model init, strategy, centralized evaluation."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from stamen.client.edge_device import task_model_id
from stamen.client.models import evaluate_model, get_weights, set_weights
from stamen.client.task import build_model, test_data
from stamen.server.aggregators import Aggregator
from stamen.server.bristle.peer_strategy import PeerStrategy
from stamen.server.bristle.relay import EVALUATION, is_peer_mode
from stamen.server.config import ServerConfig
from stamen.server.edge_downlink import EdgeSession
from stamen.server.history import ProgressFn, RoundRecord
from stamen.server.privacy.central import CentralDP
from stamen.server.rounds import AttackHook
from stamen.server.strategy import StamenStrategy

log = logging.getLogger("stamen.server")


@dataclass
class FederationResult:
    """Per-round records and the final global weights."""

    rounds: list[RoundRecord]
    weights: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)  # written to results.json (e.g. "evaluation")


def make_aggregator(cfg: ServerConfig) -> Aggregator:
    """The run's aggregator: pre-aggregators then the rule, params routed by name (built once, since
    some rules keep state across rounds)."""
    from stamen.server.aggregators.compose import build_aggregator

    agg = build_aggregator(cfg.rule, cfg.pre, cfg.rule_params, seed=cfg.seed)
    rule = getattr(agg, "rule", agg)
    need = getattr(rule, "required_server_lr", None)
    if need is not None and cfg.server_lr != need:
        raise ValueError(
            f"aggregation.rule={cfg.rule!r} needs aggregation.server_lr={need}, got {cfg.server_lr}"
        )
    if getattr(rule, "mode", "server") == "peer":  # Bristle's peer mode: the server only relays
        from stamen.server.bristle.relay import check_peer_mode

        check_peer_mode(cfg)
    elif hasattr(rule, "set_validation"):  # Bristle's server mode: a server-held validation slice
        from stamen.client.bristle_model import validation_slice

        rule.set_validation(*validation_slice(cfg.seed))
    return agg


def make_central_dp(cfg: ServerConfig) -> CentralDP | None:
    """The run's central-DP mechanism and accountant (noise calibrated before round 1), or None."""
    p = cfg.privacy
    if p.get("mode") != "central":
        return None
    from stamen.server.privacy.central import CentralDP

    common = dict(
        clipping_norm=float(p["clipping_norm"]),
        clients_per_round=cfg.per_round,
        num_clients=cfg.num_clients,
        rounds=cfg.rounds,
        seed=cfg.seed,
    )
    if p["calibration"] == "target_epsilon":
        return CentralDP.from_target(float(p["target_epsilon"]), float(p["delta"]), **common)
    return CentralDP(float(p["noise_multiplier"]), delta=float(p["delta"]), **common)


def make_rqm_accountant(cfg: ServerConfig) -> Callable[[Sequence[str]], float] | None:
    """``senders of a round -> worst client's cumulative ε`` for ``privacy.mode = "rqm"``, or None.

    Exact RQM Rényi DP composed over the model's coordinates and the rounds each client took part in
    (no amplification by client sampling: the server sees every client's message).
    """
    if cfg.privacy.get("mode") != "rqm":
        return None
    from stamen.server.privacy.rqm_rdp import RqmAccountant, RqmParams

    params = RqmParams.from_stage(dict(cfg.codec.stages[0].params))
    dims = sum(int(t.numel()) for t in build_model(cfg.task).state_dict().values())
    accountant = RqmAccountant(params, dims)
    target_delta = float(cfg.privacy["delta"])

    def step(senders: Sequence[str]) -> float:
        accountant.step(list(senders))
        return float(accountant.epsilon(target_delta))

    return step


def make_central_evaluator(cfg: ServerConfig) -> Callable[[dict[str, np.ndarray]], tuple[float, float]]:
    """``weights -> (loss, accuracy)`` on the task's held-out test split."""
    model = build_model(cfg.task)
    data = test_data(cfg.task)

    def evaluate(weights: dict[str, np.ndarray]) -> tuple[float, float]:
        set_weights(model, weights)
        return evaluate_model(model, data.x, data.y)

    return evaluate


def run_federation(
    grid: Grid,
    cfg: ServerConfig,
    progress: ProgressFn | None = None,
    attack_factory: Callable[[int], AttackHook | None] | None = None,
) -> FederationResult:
    """Run ``cfg.rounds`` synchronous rounds with :class:`StamenStrategy` via ``Strategy.start``."""
    random.seed(cfg.seed)
    torch.set_num_threads(1)
    initial = get_weights(build_model(cfg.task))
    edge = EdgeSession(initial, cfg.downlink, task_model_id(cfg.task)) if cfg.runtime == "edge" else None
    aggregator, evaluate = make_aggregator(cfg), make_central_evaluator(cfg)
    strategy: StamenStrategy
    if is_peer_mode(aggregator):
        from stamen.client.bristle_peer import output_layer_name

        layer = output_layer_name(initial)
        strategy = PeerStrategy(
            cfg, layer, initial[layer].shape[0], evaluate, progress, aggregator, attack_factory
        )
    else:
        strategy = StamenStrategy(
            cfg,
            evaluate=evaluate,
            progress=progress,
            aggregator=aggregator,
            attack_factory=attack_factory,
            central_dp=make_central_dp(cfg),
            edge=edge,
            client_accountant=make_rqm_accountant(cfg),
        )
    try:
        result = _start(strategy, grid, cfg, initial)
    finally:
        if edge is not None:
            edge.close()
    final = {k: a.numpy() for k, a in result.arrays.items()} if result.arrays else initial
    extra = {"evaluation": EVALUATION} if isinstance(strategy, PeerStrategy) else {}
    return FederationResult(rounds=list(strategy.history), weights=final, extra=extra)


def _start(strategy: StamenStrategy, grid: Grid, cfg: ServerConfig, initial: dict[str, np.ndarray]) -> Any:
    return strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=cfg.rounds,
        timeout=cfg.timeout_s,
        train_config=ConfigRecord({}),
        evaluate_config=ConfigRecord({}),
        evaluate_fn=strategy.evaluate_global,
    )
