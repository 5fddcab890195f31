"""Bristle peer mode: every node integrates its peers' output layers with its own test slice.

Faithful to the paper's decentralized setting (Verbraeken et al., arXiv 2110.11006) and to the
node loop of the code (``fedml/.../ai/Node.kt::performIteration`` and
``SimulatedRunner.kt``, jverbraeken/trustchain-superapp @ a505112b). Per node the code keeps a
*consolidated* layer ``cw`` (what it shares, starts at 0) and the freshly *trained* layer ``tw``.
One round (one "iteration", communication pattern "all", latency 0):

1. every **honest** node with a non-empty inbox (the layers its peers shared last round)
   prioritizes them (:func:`~stamen.server.bristle.prioritizer.prioritize`) and integrates them
   (:func:`~stamen.server.bristle.integrator.integrate`) with ``own = tw`` (its last trained
   layer); ``cw = center_rows(result)``: each class row minus its mean over features;
   malicious nodes never integrate;
2. every node trains from ``tw = cw`` on its own data (an engine callback), then copies the rows of
   its own training classes into ``cw`` (``updateCW``) and shares ``cw``;
3. update attackers' shared layers are replaced by ``forge(honest shared rows, k, rng)``.

Class counts (PSI-CA): the code's simulator hard-codes 3 for every peer (PSI-CA disabled); we use
what the paper describes, the intersection ``|classes_i & classes_j|`` for honest peers, and
``|familiar_i|`` for malicious peers (the code's comment: attackers claim the node's classes).
Everything here is numpy and pure given the callbacks. :func:`run_peer_mode` is the reference that
drives all nodes in one loop; the engines run the same per-node step :func:`node_round` on each
client (:mod:`stamen.client.bristle_peer`) with the server as a relay
(:mod:`stamen.server.bristle.relay`). Rounds are numbered from 1, as the engines' server rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from stamen.task.bristle.integrator import integrate
from stamen.task.bristle.prioritizer import DEFAULT_CLOSEST, DEFAULT_RANDOM, prioritize

TrainFn = Callable[[int, int, np.ndarray], np.ndarray]  # (node, round, start layer) -> trained layer
ForgeFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]  # UpdateAttack on flat rows
EvalFn = Callable[[int, np.ndarray], float]  # (node, consolidated layer) -> accuracy


@dataclass(frozen=True)
class PeerNode:
    """Static description of one node.

    Attributes
    ----------
    classes : tuple[int, ...]
        Classes of its training data (the code's ``usedClassIndices``).
    test_features, test_labels : ndarray
        ``(m, F)`` frozen features and ``(m,)`` labels of its local test slice (code: 10 samples per
        familiar class).
    honest : bool
        Malicious nodes never integrate.
    """

    classes: tuple[int, ...]
    test_features: np.ndarray
    test_labels: np.ndarray
    honest: bool = True


@dataclass(frozen=True)
class PeerConfig:
    """Prioritizer counts and whether to center the integrated rows (code: always)."""

    num_closest: int = DEFAULT_CLOSEST
    num_random: int = DEFAULT_RANDOM
    center: bool = True


@dataclass
class PeerState:
    """Mutable per-run state: consolidated and trained layers per node, last round's messages."""

    consolidated: list[np.ndarray]
    trained: list[np.ndarray]
    shared: dict[int, np.ndarray] = field(default_factory=dict)


def center_rows(layer: np.ndarray) -> np.ndarray:
    """Each class row minus its mean over features (``Node.kt``: column minus ``meanNumber``)."""
    return (layer - layer.mean(axis=1, keepdims=True)).astype(np.float32)


def absorb_training(consolidated: np.ndarray, trained: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``updateCW``: the rows of the node's training classes come from the trained layer."""
    out = consolidated.copy()
    idx = list(classes)
    out[idx] = trained[idx]
    return out


def overlap_count(familiar: Iterable[int], declared: Iterable[int]) -> int:
    """PSI-CA cardinality ``|familiar & declared|`` (what a node learns about a peer's classes)."""
    return len({int(c) for c in familiar} & {int(c) for c in declared})


def class_count(node: PeerNode, peer: PeerNode) -> int:
    """PSI-CA cardinality a node sees for ``peer`` (malicious peers claim all of the node's classes)."""
    familiar = np.unique(node.test_labels)
    return len(familiar) if not peer.honest else overlap_count(familiar, peer.classes)


@dataclass(frozen=True)
class Inbox:
    """What a node received in one round: the peers' layers ``(p, C, F)`` in ascending sender order,
    the senders' ids and, per sender, the PSI-CA class count."""

    senders: tuple[int, ...]
    layers: np.ndarray
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.layers.ndim != 3 or not len(self.senders) == len(self.counts) == len(self.layers):
            raise ValueError(
                f"inbox needs (p, C, F) layers with p senders and p counts; got "
                f"{self.layers.shape}, {len(self.senders)}, {len(self.counts)}"
            )


def empty_inbox(shape: tuple[int, int]) -> Inbox:
    """An inbox with no layer (round 1, or a node that never integrates)."""
    return Inbox((), np.zeros((0, *shape), np.float32), ())


def node_inbox(nodes: Sequence[PeerNode], i: int, shared: Mapping[int, np.ndarray]) -> Inbox:
    """Node ``i``'s inbox: every other node's shared layer, senders ascending."""
    senders = tuple(sorted(j for j in shared if j != i))
    if not senders:
        return empty_inbox(next(iter(shared.values())).shape if shared else (0, 0))
    layers = np.stack([shared[j] for j in senders]).astype(np.float32)
    return Inbox(senders, layers, tuple(class_count(nodes[i], nodes[j]) for j in senders))


def integrate_inbox(
    node: PeerNode, own: np.ndarray, inbox: Inbox, rng: np.random.Generator, cfg: PeerConfig
) -> np.ndarray:
    """Step 1 for one node: prioritize + integrate a non-empty inbox with ``own`` (its last trained
    layer) on its test slice, then center. Returns the new ``cw``."""
    chosen = prioritize(own, inbox.layers, rng, cfg.num_closest, cfg.num_random)
    counts = [inbox.counts[k] for k in chosen]
    result = integrate(own, inbox.layers[chosen], node.test_features, node.test_labels, counts)
    return center_rows(result.layer) if cfg.center else result.layer


def node_round(
    node: PeerNode,
    consolidated: np.ndarray,
    trained: np.ndarray,
    inbox: Inbox,
    rng: np.random.Generator,
    cfg: PeerConfig,
    train: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2 for one node: integrate (if the inbox is not empty), train from ``cw``, absorb the
    trained rows of its own classes. Returns ``(cw, tw)``; ``cw`` is what the node shares.

    The engines' clients and :func:`peer_round` both call this, so they run the same node logic.
    """
    cw = integrate_inbox(node, trained, inbox, rng, cfg) if len(inbox.senders) else consolidated
    tw = np.asarray(train(cw), dtype=np.float32)
    return absorb_training(cw, tw, node.classes), tw


def node_rng(seed: int, rnd: int, node: int) -> np.random.Generator:
    """The prioritizer's generator of ``node`` in round ``rnd`` (a node can rebuild it alone)."""
    return np.random.default_rng([seed, rnd, node, 0xB215])


def peer_round(
    nodes: Sequence[PeerNode],
    state: PeerState,
    rnd: int,
    train: TrainFn,
    seed: int,
    cfg: PeerConfig,
    forge: ForgeFn | None = None,
) -> PeerState:
    """One round (steps 1-3) over all nodes; returns the next state (inputs are not modified).

    Node ``i`` draws its exploration peers from :func:`node_rng` ``(seed, rnd, i)`` and the forged
    messages use ``default_rng([seed, rnd, 0xBAD])`` (the engines' attack hook), so a distributed run
    reproduces them. Malicious nodes get an empty inbox (they never integrate).
    """
    consolidated, trained = [], []
    for i, node in enumerate(nodes):
        shape = state.consolidated[i].shape
        inbox = node_inbox(nodes, i, state.shared) if node.honest else empty_inbox(shape)
        cw, tw = node_round(
            node,
            state.consolidated[i],
            state.trained[i],
            inbox,
            node_rng(seed, rnd, i),
            cfg,
            partial(train, i, rnd),
        )
        consolidated.append(cw)
        trained.append(tw)
    shared = {i: w.copy() for i, w in enumerate(consolidated)}
    bad = [i for i, n in enumerate(nodes) if not n.honest]
    if forge is not None and bad:
        shared.update(_forged(nodes, shared, bad, forge, np.random.default_rng([seed, rnd, 0xBAD])))
    return PeerState(consolidated=consolidated, trained=trained, shared=shared)


def _forged(
    nodes: Sequence[PeerNode],
    shared: Mapping[int, np.ndarray],
    bad: list[int],
    forge: ForgeFn,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    shape = shared[bad[0]].shape
    honest = np.stack([shared[i].reshape(-1) for i, n in enumerate(nodes) if n.honest]).astype(np.float32)
    rows = np.asarray(forge(honest, len(bad), rng), dtype=np.float32)
    if rows.shape != (len(bad), honest.shape[1]):
        raise ValueError(f"forge returned {rows.shape}, expected {(len(bad), honest.shape[1])}")
    return {i: rows[k].reshape(shape) for k, i in enumerate(bad)}


def run_peer_mode(
    nodes: Sequence[PeerNode],
    init: np.ndarray,
    rounds: int,
    train: TrainFn,
    seed: int,
    cfg: PeerConfig | None = None,
    forge: ForgeFn | None = None,
    evaluate: EvalFn | None = None,
) -> tuple[PeerState, list[float]]:
    """Run rounds ``1 .. rounds`` of peer mode from the layer ``init`` (code: zeros) for every node.

    Returns the final state and, per round, the mean ``evaluate`` accuracy over honest nodes
    (``nan`` without ``evaluate``).
    """
    if rounds < 0 or not nodes:
        raise ValueError(f"need rounds >= 0 and at least one node, got {rounds}, {len(nodes)}")
    cfg = cfg or PeerConfig()
    state = PeerState([init.astype(np.float32)] * len(nodes), [init.astype(np.float32)] * len(nodes))
    history: list[float] = []
    for rnd in range(1, rounds + 1):  # 1-based, as the engines' server rounds
        state = peer_round(nodes, state, rnd, train, seed, cfg, forge)
        honest = [i for i, n in enumerate(nodes) if n.honest]
        accs = [evaluate(i, state.consolidated[i]) for i in honest] if evaluate else [float("nan")]
        history.append(float(np.mean(accs)))
    return state, history
