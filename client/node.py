"""One client round as a pure function, shared by the ClientApp and the in-process engine.

``what the server sent -> weights (full, or a signed delta applied to the node's edge store) ->
trainer (or Bristle's peer round) -> delta = local - global -> [local DP] -> codec -> Envelope
(signed with the node's key when it has one)``. The ClientApp runs the same steps, split between its
train handler and its mods (:mod:`stamen.client.mods`); the in-process engine calls
:func:`client_round` directly. Keeping them here is what makes the engines run the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from stamen.client.bristle_peer import PeerRound, peer_update
from stamen.client.core import encode_delta, local_privacy, local_update, reply_metrics
from stamen.client.state import ClientState
from stamen.client.trainers import TrainResult
from stamen.edge import EdgeRuntime, StaleVersion
from stamen.edge.errors import RefusedBase
from stamen.protocols import (
    BaseModelMismatch,
    CodecError,
    MalformedUpdate,
    SignatureError,
    Signer,
    keys,
    model_hash,
)
from stamen.protocols.envelope import unpack
from stamen.task.bristle.peer import PeerConfig
from stamen.task.bristle.relayed import Relayed
from stamen.task.data import DataSource
from stamen.task.seeds import client_seed, dp_seed
from stamen.task.spec import RoundInstructions, TrainSpec

Weights = dict[str, np.ndarray]
CODEC_SEED = 0xC0DEC  # the codec's randomness: client_seed ^ CODEC_SEED (secret under RQM)
log = logging.getLogger("stamen.client")


@dataclass
class Node:
    """What a node holds locally (never sent to it): its data, its name, its keys and store.

    Attributes
    ----------
    data : DataSource
        The node's own training data.
    sender : str
        The client key it names in its envelopes (``"client-<pid>"`` simulated, ``"node-<id>"``).
    seed_id : int
        Its per-client seed stream (partition id, or node id).
    store : EdgeRuntime or None
        The edge model store of a device (``clients.runtime = "edge"``).
    signer : Signer or None
        The device's update-signing key.
    endorsement : bytes or None
        The node key's endorsement of ``signer``'s public key (:mod:`stamen.protocols.identity`),
        sent with every update so the server can bind the signature to the authenticated node.
    seeded_dp : bool
        Whether the node follows a server that asks for client-side DP noise derived from the run
        seed (``privacy.noise = "seeded"``), which that server could then remove. True in
        simulations; a deployed node refuses unless its node config says ``allow-seeded-dp=true``.
    """

    data: DataSource
    sender: str
    seed_id: int
    store: EdgeRuntime | None = None
    signer: Signer | None = None
    endorsement: bytes | None = None
    seeded_dp: bool = True


@dataclass(frozen=True)
class Received:
    """What the server sent for one round (the transport's decoding of the message)."""

    instructions: RoundInstructions
    weights: Weights | None = None
    downlink: bytes | None = None
    relayed: Relayed | None = None
    peer: PeerConfig | None = None
    base_hash: str | None = None  # model_hash(weights) when the caller already knows it


@dataclass
class Trained:
    """The node's local result before DP and encoding, and the hash of what it trained from."""

    result: TrainResult
    base_hash: str
    seed: int
    metrics: dict[str, Any] = field(default_factory=dict)


class DeviceHolds(Exception):
    """The server's delta starts from another version than the device holds (it missed or lost an
    earlier one): the device replies with what it holds so the server can resynchronize."""

    def __init__(self, held_hash: str, version: int) -> None:
        super().__init__(f"the device holds version {version} ({held_hash[:12]}…), not the delta's base")
        self.held_hash, self.version = held_hash, version


def start_weights(node: Node, received: Received) -> tuple[Weights, str]:
    """The weights the node trains from and their hash: the message's, or its store's after
    applying the signed delta (verified against the node's trust anchor before parsing).

    Raises :class:`DeviceHolds` when the delta is for another base than the store holds."""
    if received.downlink is not None:
        if node.store is None:
            raise ValueError("the server sent an edge delta, but this node has no edge store configured")
        _apply(node, node.store, received.downlink)
        version, weights = node.store.snapshot()  # one read: another apply cannot split them
        return weights, version.hash
    if received.weights is None:
        raise ValueError(f"the train message carries neither {keys.ARRAYS!r} nor {keys.DOWNLINK!r}")
    digest = received.base_hash if received.base_hash is not None else model_hash(received.weights)
    return dict(received.weights), digest


def _apply(node: Node, store: EdgeRuntime, downlink: bytes) -> None:
    """``store.apply(downlink)``; where it fails because of what the device holds, the device says
    what it holds (:class:`DeviceHolds`) so the server resynchronizes it:

    - the delta is for another base (the store's committed manifest, which ``apply`` re-read under
      the store lock and reports with its refusal, :class:`~stamen.edge.errors.RefusedBase`: another
      process may have changed the version, a repair or an operator's rollback);
    - the store's files rotted while it ran (the result misses the signed target hash, weights are
      truncated or gone): the store is repaired as at start-up (:mod:`stamen.edge.repair`: only
      evidence against the files drops a version; logged) and ``node.store`` replaced by it; where
      the repair kept the delta's base (it only rewrote a graph), the delta is applied to it.

    Failures of the delta itself (signature, format, codec, replay) and any failure on a store found
    sound are raised as they are."""
    try:
        store.apply(downlink)
    except RefusedBase as refused:
        # The version the apply refused against, read under the store lock (not store.version(), the
        # session's; nor the manifest re-read now: another process may have committed since).
        now = refused.held
        if unpack(downlink, zero_copy=True).base_hash == now.hash:
            raise  # the base is right: a delta for another model
        raise DeviceHolds(now.hash, now.version) from None
    except (SignatureError, MalformedUpdate, CodecError, StaleVersion, BaseModelMismatch):
        raise
    except (ValueError, FileNotFoundError) as exc:  # ValidationError, StoreCorrupt, unreadable weights
        healed = EdgeRuntime.open(
            store.store, threads=store.threads, keep=store.keep, serve=False, repair=True
        )
        if healed.repaired is None:
            raise
        log.warning("edge store %s repaired while running (%s): %s", store.store, exc, healed.repaired)
        node.store, now = healed, healed.version()
        if unpack(downlink, zero_copy=True).base_hash != now.hash:
            raise DeviceHolds(now.hash, now.version) from exc
        healed.apply(downlink)  # healed in place (a graph rewritten): the delta's base is still held


def check_seeded_dp(node: Node, spec: TrainSpec) -> None:
    """Refuse a server's request for client-side DP noise it could derive (``dp_noise = "seeded"``)
    on a node that does not allow it: the server is the adversary local DP, RQM and DP-SGD guard
    against."""
    private = spec.local_dp or spec.dp_codec or spec.trainer == "dp_sgd"
    if private and spec.dp_noise == "seeded" and not node.seeded_dp:
        raise ValueError(
            "the server asked for client-side DP noise derived from the run seed (privacy.noise = "
            "'seeded'), which it could remove; this node refuses (node config allow-seeded-dp=true "
            "allows it, for experiments)"
        )


def train(node: Node, received: Received, model: nn.Module, state: ClientState) -> Trained:
    """Local training (or Bristle's peer round) from what the server sent."""
    instr = received.instructions
    check_seeded_dp(node, instr.train)
    weights, base_hash = start_weights(node, received)
    seed = client_seed(instr.seed, instr.round, node.seed_id)
    if received.relayed is None:
        result = local_update(model, weights, node.data.train(), instr.train, seed, state)
        return Trained(result, base_hash, seed)
    if received.peer is None:
        raise ValueError("a relayed inbox needs the prioritizer settings")
    where = PeerRound(instr.seed, instr.round, node.seed_id, received.peer)
    reply = peer_update(model, weights, node.data, instr.train, state, received.relayed, where)
    return Trained(reply.result, base_hash, seed, {keys.PEER_CLASSES: list(reply.classes)})


def release(
    node: Node, instr: RoundInstructions, trained: Trained, state: ClientState
) -> tuple[bytes, dict[str, Any]]:
    """Local DP (if asked), then the codec: the packed (and signed) envelope and the reply metrics."""
    res = trained.result
    delta, dp_metrics = local_privacy(res.delta, instr.train, trained.seed, state, res.trained)
    payload = encode_delta(
        delta,
        instr.codec,
        base_hash=trained.base_hash,
        version=instr.version,
        sender=node.sender,
        seed=codec_seed(instr.train, trained.seed),
        signer=node.signer,
        state=state,
        error_feedback=instr.error_feedback,
    )
    metrics = reply_metrics(instr.train, res.num_examples, {**res.metrics, **dp_metrics, **trained.metrics})
    metrics[keys.BYTES_UP] = len(payload)
    return payload, metrics


def codec_seed(spec: TrainSpec, seed: int) -> int:
    """The codec's seed from the client's round ``seed``: ``seed ^ CODEC_SEED``, or fresh OS entropy
    when the codec's randomness is the DP mechanism (RQM, ``spec.dp_codec``) and ``spec.dp_noise`` is
    ``"secret"`` (:func:`~stamen.task.seeds.dp_seed`)."""
    return dp_seed(spec.dp_noise, seed ^ CODEC_SEED) if spec.dp_codec else seed ^ CODEC_SEED


def client_round(
    node: Node, received: Received, model: nn.Module, state: ClientState
) -> tuple[bytes, Mapping[str, Any]]:
    """Train, privatize and encode one round: ``(envelope bytes, reply metrics)``."""
    trained = train(node, received, model, state)
    return release(node, received.instructions, trained, state)
