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
Everything here is numpy and pure given the callbacks; the engines drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stamen.server.bristle.integrator import integrate
from stamen.server.bristle.prioritizer import DEFAULT_CLOSEST, DEFAULT_RANDOM, prioritize

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


def class_count(node: PeerNode, peer: PeerNode) -> int:
    """PSI-CA cardinality a node sees for ``peer`` (malicious peers claim all of the node's classes)."""
    familiar = set(int(c) for c in np.unique(node.test_labels))
    return len(familiar) if not peer.honest else len(familiar & set(peer.classes))


def integrate_node(
    nodes: Sequence[PeerNode], i: int, own: np.ndarray, inbox: Mapping[int, np.ndarray],
    rng: np.random.Generator, cfg: PeerConfig,
) -> np.ndarray:
    """Step 1 for node ``i``: prioritize + integrate its inbox, then center. Returns the new ``cw``."""
    senders = sorted(j for j in inbox if j != i)
    peers = np.stack([inbox[j] for j in senders]).astype(np.float32)  # (p, C, F)
    chosen = prioritize(own, peers, rng, cfg.num_closest, cfg.num_random)
    counts = [class_count(nodes[i], nodes[senders[k]]) for k in chosen]
    node = nodes[i]
    result = integrate(own, peers[chosen], node.test_features, node.test_labels, counts)
    return center_rows(result.layer) if cfg.center else result.layer


def node_rng(seed: int, rnd: int, node: int) -> np.random.Generator:
    """The prioritizer's generator of ``node`` in round ``rnd`` (a node can rebuild it alone)."""
    return np.random.default_rng([seed, rnd, node, 0xB215])


def peer_round(
    nodes: Sequence[PeerNode], state: PeerState, rnd: int, train: TrainFn, seed: int,
    cfg: PeerConfig, forge: ForgeFn | None = None,
) -> PeerState:
    """One round (steps 1-3) over all nodes; returns the next state (inputs are not modified).

    Node ``i`` draws its exploration peers from :func:`node_rng` ``(seed, rnd, i)`` and the forged
    messages use ``default_rng([seed, rnd, 0xBAD])``, so a distributed run reproduces them.
    """
    consolidated = [w.copy() for w in state.consolidated]
    for i, node in enumerate(nodes):
        inbox = {j: w for j, w in state.shared.items() if j != i}
        if node.honest and inbox:
            consolidated[i] = integrate_node(nodes, i, state.trained[i], inbox, node_rng(seed, rnd, i), cfg)
    trained = [train(i, rnd, consolidated[i]) for i in range(len(nodes))]
    consolidated = [absorb_training(consolidated[i], trained[i], n.classes) for i, n in enumerate(nodes)]
    shared = {i: w.copy() for i, w in enumerate(consolidated)}
    bad = [i for i, n in enumerate(nodes) if not n.honest]
    if forge is not None and bad:
        shared.update(_forged(nodes, shared, bad, forge, np.random.default_rng([seed, rnd, 0xBAD])))
    return PeerState(consolidated=consolidated, trained=trained, shared=shared)


def _forged(
    nodes: Sequence[PeerNode], shared: Mapping[int, np.ndarray], bad: list[int], forge: ForgeFn,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    shape = shared[bad[0]].shape
    honest = np.stack([shared[i].reshape(-1) for i, n in enumerate(nodes) if n.honest]).astype(np.float32)
    rows = np.asarray(forge(honest, len(bad), rng), dtype=np.float32)
    if rows.shape != (len(bad), honest.shape[1]):
        raise ValueError(f"forge returned {rows.shape}, expected {(len(bad), honest.shape[1])}")
    return {i: rows[k].reshape(shape) for k, i in enumerate(bad)}


def run_peer_mode(
    nodes: Sequence[PeerNode], init: np.ndarray, rounds: int, train: TrainFn, seed: int,
    cfg: PeerConfig | None = None, forge: ForgeFn | None = None, evaluate: EvalFn | None = None,
) -> tuple[PeerState, list[float]]:
    """Run ``rounds`` peer-mode rounds from the layer ``init`` (code: zeros) for every node.

    Returns the final state and, per round, the mean ``evaluate`` accuracy over honest nodes
    (``nan`` without ``evaluate``).
    """
    if rounds < 0 or not nodes:
        raise ValueError(f"need rounds >= 0 and at least one node, got {rounds}, {len(nodes)}")
    cfg = cfg or PeerConfig()
    state = PeerState([init.astype(np.float32)] * len(nodes), [init.astype(np.float32)] * len(nodes))
    history: list[float] = []
    for rnd in range(rounds):
        state = peer_round(nodes, state, rnd, train, seed, cfg, forge)
        honest = [i for i, n in enumerate(nodes) if n.honest]
        accs = [evaluate(i, state.consolidated[i]) for i in honest] if evaluate else [float("nan")]
        history.append(float(np.mean(accs)))
    return state, history
