"""Assemble a run's round driver from the server config: the one place the parts are wired.

Used by the deployed ServerApp and by every simulation engine; a simulation passes its extras
(adversary hooks, the clients' true data sizes, Bristle's validation slice), a deployment does not.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stamen.protocols import Verifier, keys
from stamen.server.aggregators import ComposedAggregator, Rule
from stamen.server.aggregators.bristle import BristleRule
from stamen.server.aggregators.fltrust import FLTrustRule
from stamen.server.bristle.relay import PeerMode, PeerRelay, peer_config
from stamen.server.checkpoint_run import attach
from stamen.server.config import ServerConfig
from stamen.server.driver.async_driver import AsyncDriver, AsyncSettings, AsyncTransport
from stamen.server.driver.cached_downlink import CachedDownlink
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.downlink import FullDownlink
from stamen.server.driver.driver import (
    AggregateMode,
    Downlink,
    DriverSettings,
    EvalFn,
    Mode,
    RoundDriver,
    RoundHooks,
)
from stamen.server.driver.types import Transport, Weights
from stamen.server.privacy.client_bound import task_bound
from stamen.server.privacy.statement import releases_per_client
from stamen.server.rqm import rqm_accountant
from stamen.server.rules import build_rule
from stamen.server.staleness import compensation
from stamen.server.staleness.compensation import CompensationPolicy
from stamen.server.staleness.gi_conversion import GIConfig
from stamen.server.staleness.handling import StaleHandling
from stamen.server.staleness.history import ModelHistory
from stamen.task.data import TaskData
from stamen.task.local_base import local_base
from stamen.task.models import model_structure
from stamen.task.weights import evaluate_model, set_weights

HISTORY_BYTES = 256 * 2**20  # past versions an async run keeps when `drop` does not cap tau (bytes)


@dataclass
class RunExtras:
    """What only some runs have.

    Attributes
    ----------
    hooks : RoundHooks or None
        A simulation's sampler and update attack.
    declared : mapping or None
        Each client's true example count (a simulation's partition sizes): FedAvg's cap.
    malicious : collection of int
        Simulated attackers' partition ids (Bristle's relay: they claim every class).
    validation : (features, labels) or None
        Bristle's server-mode validation slice.
    downlink : Downlink or None
        Signed deltas to edge devices instead of full weights.
    verifier : Verifier or None
        Trusted client keys: every update must be signed by one.
    require_signed : bool
        Every update must be signed by the key its authenticated sending node endorsed (a deployed
        grid's transport binds each reply to it).
    max_delay : int
        The most rounds a simulated client is delayed (its update that many versions stale); the
        server then keeps that many past versions and applies the staleness rules.
    state_dir : Path or None
        Checkpoint every round there and resume from it (:mod:`stamen.server.checkpoint_run`);
        None (the default): no checkpoint.
    """

    hooks: RoundHooks | None = None
    declared: Mapping[str, int] | None = None
    malicious: Collection[int] = ()
    validation: tuple[np.ndarray, np.ndarray] | None = None
    downlink: Downlink | None = None
    verifier: Verifier | None = None
    require_signed: bool = False
    max_delay: int = 0
    state_dir: Path | None = None


def central_evaluator(cfg: ServerConfig, test: TaskData) -> EvalFn:
    """``weights -> (loss, accuracy)`` on a held-out set (one model, reused)."""
    model = model_structure(cfg.task)

    def evaluate(weights: Weights) -> tuple[float, float]:
        set_weights(model, weights)
        return evaluate_model(model, test.x, test.y)

    return evaluate


def collect_policy(cfg: ServerConfig, rule: Rule, extras: RunExtras) -> CollectPolicy:
    """What a reply must satisfy in this run.

    Under central DP whether a row is accepted may depend only on that client's own update (its
    validity, ``aggregation.max_update_norm``): the adaptive bound (``norm_ratio`` x the round's
    median norm) is off, since one added client would move the median and flip other clients' rows,
    a change of up to k·C/m instead of the declared sensitivity C/m. Clipping to C follows anyway.
    """
    a = cfg.settings.aggregation
    return CollectPolicy(
        max_norm=a.max_update_norm,
        norm_ratio=0.0 if cfg.privacy.mode == "central" else a.norm_ratio,
        max_examples=a.max_examples,
        declared=extras.declared,
        verifier=extras.verifier,
        require_signed=extras.require_signed,
        allow_plain=cfg.codec.is_dense(),
        require=(keys.PEER_CLASSES,) if rule.traits.relay_only else (),
    )


def round_mode(cfg: ServerConfig, rule: Rule, initial: Weights, extras: RunExtras) -> Mode:
    """Aggregate (with Bristle's server-mode validation set when the rule needs it), or relay."""
    inner = rule.rule if isinstance(rule, ComposedAggregator) else rule
    needs_data = inner if isinstance(inner, (BristleRule, FLTrustRule)) else None
    if rule.traits.relay_only:
        (layer,) = initial  # peer mode exchanges the single output layer
        relay = PeerRelay(initial[layer].shape[0], extras.malicious)
        return PeerMode(relay, layer, peer_config(rule), extras.hooks)
    if needs_data is not None:  # Bristle's server mode and FLTrust's root data: a server-held labelled set
        if extras.validation is None:
            raise ValueError(
                f"aggregation.rule={cfg.settings.aggregation.rule!r} needs a server-held validation set"
            )
        needs_data.set_validation(*extras.validation)
    return AggregateMode(rule, cfg.settings.aggregation.server_lr, extras.hooks)


def assemble(
    cfg: ServerConfig,
    transport: Transport,
    initial: Weights,
    evaluate: EvalFn | None = None,
    extras: RunExtras | None = None,
) -> RoundDriver:
    """The run's :class:`~stamen.server.driver.RoundDriver` (rule built once: some keep state)."""
    extras = extras or RunExtras()
    rule = build_rule(cfg.settings)
    settings = DriverSettings(
        cfg.rounds,
        cfg.per_round,
        cfg.seed,
        cfg.timeout_s,
        cfg.settings.eval.every,
        cfg.sampling,
        cfg.sample_rate,
        cfg.secret_cohorts,
        releases_per_client(cfg),  # local DP, DP-SGD, RQM: a re-run round asks no more than calibrated for
    )
    stale = stale_handling(cfg) if extras.max_delay else None
    history = ModelHistory(max_versions=extras.max_delay + 1) if extras.max_delay else None
    driver = RoundDriver(
        settings,
        transport,
        cfg.instructions,
        round_mode(cfg, rule, initial, extras),
        extras.downlink or default_downlink(cfg),
        collect_policy(cfg, rule, extras),
        rule,
        evaluate,
        extras.hooks,
        _accountant(cfg),
        stale,
        history,
    )
    driver.client_bound = task_bound(cfg)  # local DP: ε at least what the tasks sent imply
    attach(driver, cfg, extras.state_dir)
    return driver


def default_downlink(cfg: ServerConfig) -> FullDownlink | CachedDownlink:
    """``clients.downlink``: the cached downlink, or the full model every round; ``"auto"`` caches
    when the model has a frozen base (LoRA / Fed-SB adapters, or the sparse trainer)."""
    s = cfg.settings
    mode = s.clients.downlink
    if mode == "auto":
        mode = "cached" if s.lora.adapter != "none" or s.clients.trainer == "sparse" else "full"
    return CachedDownlink(local_base(cfg.task)) if mode == "cached" else FullDownlink()


def _accountant(cfg: ServerConfig) -> Callable[..., float] | None:
    if cfg.privacy.mode != "rqm":
        return None
    return rqm_accountant(cfg.codec, cfg.task, cfg.privacy.delta)


def gi_policy(cfg: ServerConfig) -> CompensationPolicy:
    """The gradient-inversion conversion for the run's task (``[server] gi_*`` settings)."""
    s, task = cfg.settings.server, cfg.task
    config = GIConfig(num_samples=s.gi_samples, iterations=s.gi_iterations, lr=s.gi_lr, seed=cfg.seed)
    return compensation.create(
        "gi",
        model=lambda: model_structure(task),
        input_shape=(task.input_dim,),
        num_classes=task.num_classes,
        config=config,
    )


def stale_handling(cfg: ServerConfig) -> StaleHandling:
    """The run's staleness rules (``[server]``)."""
    return StaleHandling.from_settings(cfg.settings.server, lambda: gi_policy(cfg))


def assemble_async(
    cfg: ServerConfig,
    transport: AsyncTransport,
    initial: Weights,
    evaluate: EvalFn | None = None,
    extras: RunExtras | None = None,
) -> AsyncDriver:
    """The run's :class:`~stamen.server.driver.async_driver.AsyncDriver` (``server.mode`` async)."""
    extras, srv = extras or RunExtras(), cfg.settings.server
    rule = build_rule(cfg.settings)
    stale = stale_handling(cfg)
    keep = stale.history_versions()  # downweight / convert take updates staler than max_staleness
    history = ModelHistory(max_versions=keep, max_bytes=None if keep else HISTORY_BYTES)
    settings = AsyncSettings(
        mode=srv.mode,
        versions=cfg.rounds,
        concurrency=srv.concurrency or cfg.per_round,
        buffer_size=srv.buffer_size,
        alpha=srv.alpha,
        server_lr=cfg.settings.aggregation.server_lr,
        momentum=srv.server_momentum,
        seed=cfg.seed,
        timeout_s=cfg.timeout_s,
        eval_every=cfg.settings.eval.every,
        max_trips=releases_per_client(cfg),  # local DP, DP-SGD, RQM: no more than calibrated for
        one_row_per_client=cfg.privacy.mode == "central",
        secret_dispatch=cfg.secret_cohorts,  # the same secret draws as a synchronous run's cohorts
    )
    downlink = extras.downlink or default_downlink(cfg)
    policy = collect_policy(cfg, rule, extras)
    parts = (downlink, policy, rule, stale, history, evaluate, _accountant(cfg))
    driver = AsyncDriver(settings, transport, cfg.instructions, *parts)
    driver.client_bound = task_bound(cfg)  # local DP: ε at least what the tasks sent imply
    attach(driver, cfg, extras.state_dir)
    return driver
