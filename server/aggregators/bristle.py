"""``bristle`` (server mode): Bristle's prioritizer and integrator run by the server.

Verbraeken, de Vos and Pouwelse, "Bristle: Decentralized Federated Learning in Byzantine, Non-i.i.d.
Environments", arXiv 2110.11006 (2021). The paper is decentralized (see
:mod:`stamen.server.bristle.peer` for the faithful peer mode); this is the same integrator for
star deployments, with the server in the role of one node:

- *own* layer: the current global output layer ``G`` (the server does not train);
- *peers*: the clients' layers ``G + delta_u`` (``delta_u`` is the output-layer segment of the
  row; all other columns must be frozen and are returned as 0);
- *local test slice*: a server-held validation set, given as frozen features ``(m, F)`` and labels
  through :meth:`BristleRule.set_validation` (required before the first aggregation);
- class counts (the paper's PSI-CA): the number of class rows a client actually changed (the
  ``bristle`` trainer, like the code's ``updateCW``, only sends the rows of its own classes);
- after integration the rows are centered (``Node.kt``) and the rule returns ``new - G``, so
  the engine's ``G + server_lr * output`` is the integrated layer for ``server_lr = 1``.

Row weights (sample counts) are ignored, as in the paper. The prioritizer follows code version
43492302 (20 closest + 5 random; see :mod:`stamen.server.bristle.prioritizer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stamen.protocols import TensorInfo
from stamen.server.aggregators.base import RoundContext, Rule, RuleTraits, check_stack, register
from stamen.task.bristle.integrator import IntegrationResult, integrate
from stamen.task.bristle.peer import center_rows
from stamen.task.bristle.prioritizer import DEFAULT_CLOSEST, DEFAULT_RANDOM, prioritize

MODES = ("server", "peer")


def labelled_features(features: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 (m, F), int64 (m,))`` server-held labelled features; ``ValueError`` naming ``what``
    (e.g. ``"bristle: validation"``) for other shapes or an empty set."""
    feats, labs = np.asarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)
    if feats.ndim != 2 or labs.shape != (feats.shape[0],) or feats.shape[0] == 0:
        raise ValueError(
            f"{what} must be (m, F) features and (m,) labels, m >= 1; got {feats.shape}, {labs.shape}"
        )
    return feats, labs


def output_segment(table: Sequence[TensorInfo], name: str = "") -> tuple[int, int, tuple[int, int]]:
    """``(start, stop, (C, F))`` of the output layer: the tensor ``name``, else the last 2-D tensor."""
    offset, found = 0, None
    for info in table:
        if (info.name == name) if name else len(info.shape) == 2:
            found = (offset, offset + info.size, (int(info.shape[0]), int(info.shape[1])))
        offset += info.size
    if found is None:
        raise ValueError(f"bristle: no output layer {'named ' + repr(name) if name else '(2-D tensor)'}")
    return found


def changed_rows(deltas: np.ndarray) -> np.ndarray:
    """``(n,)`` number of class rows each client changed, from deltas ``(n, C, F)``."""
    return np.count_nonzero(np.any(deltas != 0, axis=2), axis=1)


class BristleRule(Rule):
    """Server-mode Bristle: ``(stack (n, d), weights) -> (d,)`` after ``begin_round`` and validation.

    Parameters
    ----------
    num_closest, num_random : int
        Prioritizer counts (code 43492302: 20 and 5), both >= 0.
    seed : int
        Seeds the exploration draws (``build_aggregator`` passes a stage seed).
    layer : str
        Name of the output-layer tensor; ``""`` picks the last 2-D tensor of the model.
    center : bool
        Center each integrated class row (code: always).
    mode : str
        ``"server"`` (this rule aggregates) or ``"peer"`` (the engines only relay, see
        :mod:`stamen.server.bristle.relay`, and every node runs
        :func:`stamen.server.bristle.peer.node_round`; the rule then only carries the validated
        parameters).

    Attributes
    ----------
    last : IntegrationResult | None
        Diagnostics of the last aggregation (weights per client and class, certainties).
    """

    def __init__(
        self,
        num_closest: int = DEFAULT_CLOSEST,
        num_random: int = DEFAULT_RANDOM,
        seed: int = 0,
        layer: str = "",
        center: bool = True,
        mode: str = "server",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"bristle: mode must be one of {MODES}, got {mode!r}")
        if num_closest < 0 or num_random < 0 or num_closest + num_random == 0:
            raise ValueError(
                f"bristle: num_closest, num_random must be >= 0 and not both 0; got "
                f"{num_closest}, {num_random}"
            )
        self.num_closest, self.num_random, self.center, self.layer = num_closest, num_random, center, layer
        self.mode = mode
        # the rule returns new - G (server lr 1); in peer mode the server only relays
        self.traits = RuleTraits(required_server_lr=1.0, relay_only=mode == "peer")
        self._rng = np.random.default_rng(seed)
        self._features: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._segment: tuple[int, int, tuple[int, int]] | None = None
        self._base: np.ndarray | None = None
        self.last: IntegrationResult | None = None

    def set_validation(self, features: np.ndarray, labels: np.ndarray) -> None:
        """The server's labelled validation slice as frozen features ``(m, F)`` and labels ``(m,)``."""
        self._features, self._labels = labelled_features(features, labels, "bristle: validation")

    def begin_round(self, ctx: RoundContext) -> None:
        """Locate the output layer and remember the global weights of this round."""
        self._segment = output_segment(ctx.table, self.layer)
        self._base = np.asarray(ctx.base, dtype=np.float32)

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Integrate the clients' output layers into the global one; ``new - G`` on that segment."""
        check_stack(updates, weights)
        if self._segment is None or self._base is None:
            raise ValueError("bristle: begin_round(ctx) must be called before aggregating")
        if self._features is None or self._labels is None:
            raise ValueError("bristle: set_validation(features, labels) must be called before aggregating")
        a, b, shape = self._segment
        if updates.shape[1] != self._base.shape[0] or self._features.shape[1] != shape[1]:
            raise ValueError(f"bristle: updates/features do not match the bound layer {shape}")
        own = self._base[a:b].reshape(shape)
        deltas = updates[:, a:b].reshape(len(updates), *shape)
        peers = own[None] + deltas
        chosen = prioritize(own, peers, self._rng, self.num_closest, self.num_random)
        counts = [int(c) for c in changed_rows(deltas[chosen])]
        self.last = integrate(own, peers[chosen], self._features, self._labels, counts)
        new = center_rows(self.last.layer) if self.center else self.last.layer
        out = np.zeros(updates.shape[1], dtype=np.float32)
        out[a:b] = (new - own).reshape(-1)
        return out


@register("bristle")
def bristle(
    num_closest: int = DEFAULT_CLOSEST,
    num_random: int = DEFAULT_RANDOM,
    seed: int = 0,
    layer: str = "",
    center: bool = True,
    mode: str = "server",
) -> BristleRule:
    """Bristle: server mode (needs ``set_validation`` before the first round) or peer mode."""
    return BristleRule(num_closest, num_random, seed, layer, center, mode)
