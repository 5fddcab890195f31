"""Bristle peer mode in the engines: the server is only a relay between the nodes.

Round ``r`` (both engines, and the Flower ServerApp in a deployment):

1. the relay sends every sampled **honest** node its *inbox*: the output layers the other nodes
   shared in round ``r - 1`` (after the simulated update attack replaced the malicious ones) and,
   per sender, the class set that sender declared; round 1's inbox is empty;
2. the node (:mod:`stamen.client.bristle_peer`) turns each declared set into the PSI-CA count
   ``|familiar & declared|``, runs :func:`~stamen.task.bristle.peer.node_round` (prioritize +
   integrate with its local test slice, train, ``updateCW``) and replies with the layer it shares
   (as a delta against the run's initial layer, through the usual codec envelope) and its classes;
3. the server decodes and validates the replies (the round driver's collector),
   lets the attack hook replace the malicious senders' layers, and keeps the result as the next
   round's inboxes. Nothing is aggregated.

Simplifications (simulation only), all documented in the README:

- **PSI-CA.** The paper runs a private set intersection cardinality protocol between every pair of
  nodes, so a node learns only ``|classes_i & classes_j|``. Here the relay forwards each sender's
  declared class set and the receiving node computes the cardinality itself; malicious senders'
  sets are replaced by *all* classes (they claim the receiver's classes, as in
  :func:`~stamen.task.bristle.peer.class_count`).
- **Malicious nodes never integrate**: the relay sends them an empty inbox.
- **Evaluation**: the mean, over the honest nodes that replied this round, of the test accuracy
  (and loss) of their consolidated layer on the task's held-out test split (all classes), exactly
  what ``benchmarks/bench_frl.py`` reports for the pure peer mode. The nodes' own test slices hold
  only their familiar classes and are what the integrator selects with, so they would not show
  whether a node learned its foreign classes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from stamen.protocols import keys
from stamen.protocols.flower import weights_nbytes
from stamen.server.aggregators import ComposedAggregator, Rule
from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.bristle import BristleRule
from stamen.server.driver.collect import CollectedUpdates
from stamen.server.driver.driver import EvalFn, RoundHooks
from stamen.server.driver.types import TrainTask, Weights
from stamen.task.bristle.peer import PeerConfig
from stamen.task.bristle.relayed import Relayed

EVALUATION = (
    "peer mode: mean over the honest nodes that trained this round of their consolidated "
    "layer's accuracy/loss on the held-out test split; no global model exists"
)


def peer_config(rule: Rule) -> PeerConfig:
    """The prioritizer/centering settings carried by the ``bristle`` rule's parameters."""
    if not isinstance(rule, ComposedAggregator) or not isinstance(rule.rule, BristleRule):
        raise ValueError(f"peer mode needs aggregation.rule='bristle', got {rule!r}")
    r = rule.rule
    return PeerConfig(num_closest=int(r.num_closest), num_random=int(r.num_random), center=bool(r.center))


def sender_pid(sender: str) -> int:
    """Partition id of a ``client-<id>`` sender (peer mode relays by partition id)."""
    prefix, _, rest = sender.partition("-")
    if prefix != "client" or not rest.isdigit():
        raise ValueError(f"peer mode needs partition ids; got sender {sender!r}")
    return int(rest)


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


class PeerMode:
    """The driver's round close in peer mode: relay the (attacked) layers, aggregate nothing.

    Each task carries the node's inbox (``extra["relayed"]``) and the prioritizer settings
    (``extra["peer"]``); every reply must declare its classes (``bristle-classes``).
    """

    def __init__(
        self, relay: PeerRelay, layer: str, cfg: PeerConfig, hooks: RoundHooks | None = None
    ) -> None:
        self.relay, self.layer, self.cfg, self.hooks = relay, layer, cfg, hooks

    def extra(self, client: str) -> dict[str, object]:
        """The node's inbox and the prioritizer settings."""
        return {"relayed": self.relay.outgoing(sender_pid(client)), "peer": self.cfg}

    def close(self, rnd: int, updates: CollectedUpdates) -> Weights | None:
        """Attack hook, then the layers become the next round's inboxes; the model is unchanged."""
        if self.hooks is not None and updates.stack.shape[0]:
            ctx = RoundContext(rnd, updates.table, updates.base_flat())
            self.hooks.tamper(rnd, updates, ctx)
        layers = {sender_pid(s): w[self.layer] for s, w in updates.released().items()}
        declared = {
            sender_pid(s): tuple(int(c) for c in extras.get(keys.PEER_CLASSES, ()))
            for s, extras in updates.extras.items()
        }
        self.relay.receive(layers, {p: declared[p] for p in layers if p in declared})
        return None

    def evaluate(self, weights: Weights, fn: EvalFn) -> tuple[float, float]:
        """Mean ``(loss, accuracy)`` of the honest nodes' layers, each plugged into the model."""
        del weights
        return self.relay.evaluate(lambda layer: fn({self.layer: layer}))

    def extra_nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """The inbox layers, as Flower serializes them."""
        total = 0
        for task in tasks:
            relayed = task.extra["relayed"]
            assert isinstance(relayed, Relayed)
            total += weights_nbytes({str(j): w for j, w in relayed.layers.items()})
        return total
