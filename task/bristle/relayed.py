"""What Bristle's relay sends one node: the other nodes' shared layers and their declared classes.

Plain numpy and scalars, so that the server's transport can put it into Flower records and the node
can read it back without either side importing the other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stamen.task.bristle.peer import Inbox, PeerConfig, empty_inbox, overlap_count


@dataclass(frozen=True)
class Relayed:
    """Other nodes' layers ``(C, F)`` keyed by sender partition id, and their declared classes."""

    layers: Mapping[int, np.ndarray]
    classes: Mapping[int, tuple[int, ...]]

    def inbox(self, familiar: Collection[int], shape: tuple[int, int]) -> Inbox:
        """The node's :class:`Inbox`: senders ascending, PSI-CA counts against ``familiar``."""
        senders = tuple(sorted(self.layers))
        if not senders:
            return empty_inbox(shape)
        layers = np.stack([self.layers[j] for j in senders]).astype(np.float32)
        return Inbox(senders, layers, tuple(overlap_count(familiar, self.classes[j]) for j in senders))

    def to_plain(self, cfg: PeerConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays by sender id, settings and classes)`` — the content of the two records."""
        arrays = {str(j): np.ascontiguousarray(w, np.float32) for j, w in self.layers.items()}
        conf: dict[str, Any] = {
            "num-closest": cfg.num_closest,
            "num-random": cfg.num_random,
            "center": cfg.center,
        }
        conf.update({f"classes.{j}": [int(c) for c in cs] for j, cs in self.classes.items()})
        return arrays, conf

    @classmethod
    def from_plain(
        cls, arrays: Mapping[str, np.ndarray], conf: Mapping[str, Any]
    ) -> tuple[Relayed, PeerConfig]:
        """Inverse of :meth:`to_plain`; ``ValueError`` when a sender's classes are missing."""
        layers = {int(k): np.asarray(a, np.float32) for k, a in arrays.items()}
        missing = [j for j in layers if f"classes.{j}" not in conf]
        if missing:
            raise ValueError(f"relayed inbox: no declared classes for senders {missing}")
        classes = {j: tuple(int(c) for c in conf[f"classes.{j}"]) for j in layers}
        cfg = PeerConfig(int(conf["num-closest"]), int(conf["num-random"]), bool(conf["center"]))
        return cls(layers, classes), cfg
