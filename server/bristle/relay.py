"""Bristle peer mode in the engines: the server is only a relay between the nodes.

Round ``r`` (both engines, and the Flower ServerApp in a deployment):

1. the relay sends every sampled **honest** node its *inbox*: the output layers the other nodes
   shared in round ``r - 1`` (after the simulated update attack replaced the malicious ones) and,
   per sender, the class set that sender declared; round 1's inbox is empty;
2. the node (:mod:`stamen.client.bristle_peer`) turns each declared set into the PSI-CA count
   ``|familiar & declared|``, runs :func:`~stamen.server.bristle.peer.node_round` (prioritize +
   integrate with its local test slice, train, ``updateCW``) and replies with the layer it shares
   (as a delta against the run's initial layer, through the usual codec envelope) and its classes;
3. the server decodes and validates the replies (:class:`~stamen.server.rounds.RoundAggregator`),
   lets the attack hook replace the malicious senders' layers, and keeps the result as the next
   round's inboxes. Nothing is aggregated.

Simplifications (simulation only), all documented in the README:

- **PSI-CA.** The paper runs a private set intersection cardinality protocol between every pair of
  nodes, so a node learns only ``|classes_i & classes_j|``. Here the relay forwards each sender's
  declared class set and the receiving node computes the cardinality itself; malicious senders'
  sets are replaced by *all* classes (they claim the receiver's classes, as in
  :func:`~stamen.server.bristle.peer.class_count`).
- **Malicious nodes never integrate**: the relay sends them an empty inbox.
- **Evaluation**: the mean, over the honest nodes that replied this round, of the test accuracy
  (and loss) of their consolidated layer on the task's held-out test split (all classes), exactly
  what ``benchmarks/bench_frl.py`` reports for the pure peer mode. The nodes' own test slices hold
  only their familiar classes and are what the integrator selects with, so they would not show
  whether a node learned its foreign classes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stamen.protocols import keys
from stamen.server.bristle.peer import Inbox, PeerConfig, empty_inbox, overlap_count

if TYPE_CHECKING:
    from stamen.server.config import ServerConfig

EVALUATION = (
    "peer mode: mean over the honest nodes that trained this round of their consolidated "
    "layer's accuracy/loss on the held-out test split; no global model exists"
)
PEER_MODELS = ("bristle_transfer",)  # the local test slice is drawn by client.bristle_model


def is_peer_mode(aggregator: object) -> bool:
    """Whether the run's rule asks for Bristle's peer mode (``aggregation.mode = "peer"``)."""
    return getattr(getattr(aggregator, "rule", aggregator), "mode", "server") == "peer"


def peer_config(aggregator: object) -> PeerConfig:
    """The prioritizer/centering settings carried by the ``bristle`` rule's parameters."""
    from stamen.server.aggregators.bristle import BristleRule

    rule = getattr(aggregator, "rule", aggregator)
    if not isinstance(rule, BristleRule):
        raise ValueError(f"peer mode needs aggregation.rule='bristle', got {type(rule).__name__}")
    return PeerConfig(
        num_closest=int(rule.num_closest), num_random=int(rule.num_random), center=bool(rule.center)
    )


def check_peer_mode(cfg: ServerConfig) -> None:
    """Refuse settings peer mode does not support, naming them (``ValueError``)."""
    problems = []
    if cfg.pre:
        problems.append(f"aggregation.pre={list(cfg.pre)} (nothing is aggregated)")
    if cfg.privacy.get("mode", "off") != "off":
        problems.append(f"privacy.mode={cfg.privacy.get('mode')!r}")
    if cfg.runtime != "memory":
        problems.append(f"clients.runtime={cfg.runtime!r}")
    if cfg.task.model not in PEER_MODELS:
        problems.append(f"model.name={cfg.task.model!r} (needs one of {PEER_MODELS})")
    if problems:
        raise ValueError("aggregation.mode='peer' does not support " + ", ".join(problems))


@dataclass(frozen=True)
class Relayed:
    """What the relay sends one node: other nodes' layers ``(C, F)`` and their declared classes."""

    layers: Mapping[int, np.ndarray]
    classes: Mapping[int, tuple[int, ...]]

    def inbox(self, familiar: Collection[int], shape: tuple[int, int]) -> Inbox:
        """The node's :class:`Inbox`: senders ascending, PSI-CA counts against ``familiar``."""
        senders = tuple(sorted(self.layers))
        if not senders:
            return empty_inbox(shape)
        layers = np.stack([self.layers[j] for j in senders]).astype(np.float32)
        return Inbox(senders, layers, tuple(overlap_count(familiar, self.classes[j]) for j in senders))

    def to_records(self, cfg: PeerConfig) -> tuple[Any, Any]:
        """``(ArrayRecord of the layers, ConfigRecord of settings and classes)`` for the message."""
        from flwr.app import Array, ArrayRecord, ConfigRecord

        arrays = ArrayRecord(
            {str(j): Array(np.ascontiguousarray(w, np.float32)) for j, w in self.layers.items()}
        )
        conf: dict[str, Any] = {
            "num-closest": cfg.num_closest,
            "num-random": cfg.num_random,
            "center": cfg.center,
        }
        conf.update({f"classes.{j}": [int(c) for c in cs] for j, cs in self.classes.items()})
        return arrays, ConfigRecord(conf)

    @classmethod
    def from_records(cls, arrays: Mapping[str, Any], conf: Mapping[str, Any]) -> tuple[Relayed, PeerConfig]:
        """Inverse of :meth:`to_records`; ``ValueError`` when a sender's classes are missing."""
        layers = {int(k): np.asarray(a.numpy(), np.float32) for k, a in arrays.items()}
        missing = [j for j in layers if f"classes.{j}" not in conf]
        if missing:
            raise ValueError(f"{keys.PEER_CONFIG}: no declared classes for senders {missing}")
        classes = {j: tuple(int(c) for c in conf[f"classes.{j}"]) for j in layers}
        cfg = PeerConfig(int(conf["num-closest"]), int(conf["num-random"]), bool(conf["center"]))
        return cls(layers, classes), cfg


class PeerRelay:
    """Server-side state of peer mode: what was relayed last round and who declared which classes.

    Parameters
    ----------
    num_classes : int
        Rows of the output layer (a malicious sender claims all of them).
    malicious : collection of int
        Partition ids of the simulated attackers (empty inbox; claimed classes).
    """

    def __init__(self, num_classes: int, malicious: Collection[int] = ()) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.malicious = frozenset(int(p) for p in malicious)
        self.shared: dict[int, np.ndarray] = {}
        self.declared: dict[int, tuple[int, ...]] = {}

    def outgoing(self, pid: int) -> Relayed:
        """Node ``pid``'s inbox for this round (empty for a malicious node)."""
        if pid in self.malicious:
            return Relayed({}, {})
        layers = {j: w for j, w in self.shared.items() if j != pid}
        return Relayed(layers, {j: self._claimed(j) for j in layers})

    def _claimed(self, j: int) -> tuple[int, ...]:
        return tuple(range(self.num_classes)) if j in self.malicious else self.declared[j]

    def receive(self, layers: Mapping[int, np.ndarray], declared: Mapping[int, tuple[int, ...]]) -> None:
        """This round's shared layers (after the attack hook) replace last round's; ``declared``
        must name every sender's classes."""
        missing = sorted(set(layers) - set(declared) - self.malicious)
        if missing:
            raise ValueError(f"peer mode: no declared classes for senders {missing}")
        self.declared.update({int(j): tuple(int(c) for c in cs) for j, cs in declared.items()})
        self.shared = {int(j): np.asarray(w, np.float32) for j, w in layers.items()}

    def evaluate(self, fn: Callable[[np.ndarray], tuple[float, float]]) -> tuple[float, float]:
        """Mean ``(loss, accuracy)`` of ``fn`` over this round's honest layers (NaN if none)."""
        results = [fn(w) for j, w in sorted(self.shared.items()) if j not in self.malicious]
        if not results:
            return float("nan"), float("nan")
        return float(np.mean([r[0] for r in results])), float(np.mean([r[1] for r in results]))
