"""Bristle's peer mode in the ``inprocess`` engine: the server only relays (see
:mod:`stamen.server.bristle.relay`).

Runs exactly what the Flower apps run, minus the transport: the client side is
:func:`stamen.client.bristle_peer.peer_update` (the ClientApp's peer path), the reply goes through a
real codec envelope into :class:`~stamen.server.rounds.RoundAggregator` (decode, validate, attack
hook), and :meth:`~stamen.server.rounds.RoundAggregator.released` replaces aggregation, as in
:class:`~stamen.server.bristle.peer_strategy.PeerStrategy`. Bytes down are counted as the Flower
engine serializes them: the (initial) arrays plus the inbox layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from stamen.client.bristle_peer import PeerReply, PeerRound, output_layer_name, peer_update
from stamen.client.core import client_seed, encode_delta
from stamen.client.state import ClientState
from stamen.client.task import client_data
from stamen.protocols import model_hash
from stamen.protocols.flower import weights_nbytes
from stamen.server.aggregators import Aggregator
from stamen.server.bristle.peer_strategy import sender_pid
from stamen.server.bristle.relay import PeerRelay, is_peer_mode, peer_config
from stamen.server.config import ServerConfig
from stamen.server.rounds import AttackHook, RoundAggregator

EvalFn = Callable[[dict[str, np.ndarray]], tuple[float, float]]
ClientProgressFn = Callable[[int, int], None]


def peer_relay(
    aggregator: Aggregator, cfg: ServerConfig, weights: Mapping[str, np.ndarray]
) -> PeerRelay | None:
    """The relay of Bristle's peer mode, or None for every other rule."""
    if not is_peer_mode(aggregator):
        return None
    return PeerRelay(weights[output_layer_name(weights)].shape[0], cfg.malicious)


def peer_round(
    run: Any,
    relay: PeerRelay,
    weights: dict[str, np.ndarray],
    rnd: int,
    client_progress: ClientProgressFn | None = None,
) -> tuple[RoundAggregator, int]:
    """One round: each sampled node integrates its inbox and trains; the server relays.

    ``run`` is the in-process engine's run state (``cfg``, ``model``, ``aggregator``, ``policy``,
    ``attacks``, ``states``). Returns the round's RoundAggregator (stats) and bytes down.
    """
    cfg: ServerConfig = run.cfg
    pids = cfg.cohort(rnd)
    base_hash, name = model_hash(weights), output_layer_name(weights)
    hook: AttackHook | None = run.attacks(rnd) if run.attacks else None
    ra = RoundAggregator(weights, base_hash, len(pids), run.aggregator, run.policy, hook)
    bytes_down, declared = 0, {}
    for i, pid in enumerate(pids):
        relayed = relay.outgoing(pid)
        bytes_down += weights_nbytes(weights) + weights_nbytes({str(j): w for j, w in relayed.layers.items()})
        state = run.states.setdefault(pid, ClientState())
        reply = peer_update(
            run.model,
            weights,
            client_data(cfg.task, pid),
            cfg.train_for_round(rnd),
            state,
            relayed,
            PeerRound(cfg.seed, rnd, pid, peer_config(run.aggregator)),
        )
        declared[pid] = reply.classes
        _submit(cfg, ra, reply, base_hash, rnd, pid, state)
        if client_progress is not None:
            client_progress(i + 1, len(pids))
    relay.receive({sender_pid(s): w[name] for s, w in ra.released().items()}, declared)
    return ra, bytes_down


def _submit(
    cfg: ServerConfig,
    ra: RoundAggregator,
    reply: PeerReply,
    base_hash: str,
    rnd: int,
    pid: int,
    state: ClientState,
) -> None:
    """Encode the shared layer into a real envelope (as ``codec_mod``) and hand it to the server."""
    res = reply.result
    payload = encode_delta(
        res.delta,
        cfg.codec.to_string(),
        base_hash=base_hash,
        version=rnd,
        sender=f"client-{pid}",
        seed=client_seed(cfg.seed, rnd, pid) ^ 0xC0DEC,
        state=state,
        error_feedback=cfg.error_feedback,
    )
    if "train-loss" in res.metrics:
        ra.stats.train_loss.append(res.metrics["train-loss"])
    ra.add_envelope(f"client-{pid}", payload, res.num_examples)


def evaluate_peers(
    relay: PeerRelay, evaluate: EvalFn, weights: Mapping[str, np.ndarray]
) -> tuple[float, float]:
    """Mean (loss, accuracy) of the honest nodes' layers, each plugged into the model."""
    name = output_layer_name(weights)
    return relay.evaluate(lambda layer: evaluate({name: layer}))
