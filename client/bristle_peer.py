"""Client side of Bristle's peer mode: integrate the relayed inbox, train, share the consolidated layer.

The node keeps its consolidated layer ``cw`` and its last trained layer ``tw`` across rounds in its
:class:`~stamen.client.state.ClientState` (``context.state`` under Flower; the in-process engine's
per-client state), starting from the run's initial layer (zeros for ``bristle_transfer``). Each
round runs :func:`stamen.task.bristle.peer.node_round`, the same function the pure reference
:func:`~stamen.task.bristle.peer.run_peer_mode` runs for every node, with

- the inbox the relay sent (:class:`~stamen.task.bristle.relayed.Relayed`), PSI-CA counts computed
  here against the node's familiar classes;
- the node's local test slice (its data source's ``test()``; the code's 10 samples of each of the
  node's classes, which a simulation draws with :func:`~stamen.simulations.bristle_data.validation_inputs`),
  as frozen features of the pre-trained extractor;
- the prioritizer's generator :func:`~stamen.task.bristle.peer.node_rng` ``(seed, round, pid)``;
- training = :func:`~stamen.client.core.local_update` from ``cw`` with the round's seed.

The node declares as its classes the labels of the data it trains on (a label-flipping attacker's
flipped labels, as the ``bristle`` trainer's ``updateCW`` rows); its reply is ``cw - initial``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from stamen.client.core import local_update
from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult
from stamen.task.bristle.peer import PeerConfig, PeerNode, node_rng, node_round
from stamen.task.bristle.relayed import Relayed
from stamen.task.data import DataSource
from stamen.task.models.bristle_transfer import extract_features
from stamen.task.seeds import client_seed
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

CW, TW = "bristle/cw", "bristle/tw"  # ClientState arrays: consolidated and last trained layer


@dataclass(frozen=True)
class PeerRound:
    """Who and when: run seed (also the test slice's seed), 1-based server round, partition id."""

    seed: int
    rnd: int
    pid: int
    cfg: PeerConfig


@dataclass(frozen=True)
class PeerReply:
    """The update to send (``cw - initial``) and the classes the node declares."""

    result: TrainResult
    classes: tuple[int, ...]


def local_test_features(data: DataSource) -> tuple[np.ndarray, np.ndarray]:
    """The node's local test slice as frozen features ``(m, F)`` and labels ``(m,)``."""
    test = data.test()
    if test is None or len(test.y) == 0:
        raise ValueError("Bristle peer mode needs a local test slice: the node's data source has none")
    return extract_features(test.x), np.asarray(test.y, dtype=np.int64)


def output_layer_name(base: Mapping[str, np.ndarray]) -> str:
    """The single (C, F) tensor peer mode exchanges; ``ValueError`` for any other model layout."""
    if len(base) != 1 or next(iter(base.values())).ndim != 2:
        raise ValueError(
            f"Bristle peer mode exchanges one (C, F) output layer; the model has "
            f"{[(k, v.shape) for k, v in base.items()]}"
        )
    return next(iter(base))


def peer_update(
    model: nn.Module,
    base: Mapping[str, np.ndarray],
    data: DataSource,
    spec: TrainSpec,
    state: ClientState,
    relayed: Relayed,
    where: PeerRound,
) -> PeerReply:
    """One node round of peer mode; updates ``state`` and returns what to send."""
    train_data = data.train()
    name = output_layer_name(base)
    init = np.asarray(base[name], np.float32)
    cw, tw = state.arrays.get(CW, init), state.arrays.get(TW, init)
    classes = tuple(int(c) for c in np.unique(train_data.y))
    if relayed.layers:
        feats, labels = local_test_features(data)
    else:  # nothing to integrate: the slice is not needed
        feats, labels = np.zeros((0, init.shape[1]), np.float32), np.zeros(0, np.int64)
    node = PeerNode(classes, feats, labels)
    inbox = relayed.inbox(np.unique(labels), init.shape)
    trained: list[TrainResult] = []

    def train(start: np.ndarray) -> np.ndarray:
        seed = client_seed(where.seed, where.rnd, where.pid)
        trained.append(local_update(model, {name: start}, train_data, spec, seed, state))
        return get_weights(model)[name]

    cw, tw = node_round(node, cw, tw, inbox, node_rng(where.seed, where.rnd, where.pid), where.cfg, train)
    state.arrays[CW], state.arrays[TW] = cw, tw
    result = TrainResult(
        delta={name: (cw - init).astype(np.float32)},
        num_examples=trained[0].num_examples,
        metrics=dict(trained[0].metrics),
        trained=(name,),
    )
    return PeerReply(result, classes)
