"""State that aggregation rules keep across rounds, captured for a checkpoint and put back on resume.

A rule is a tree: central DP wraps a rule, a composed aggregator holds pre-aggregators and a rule, a
:class:`~stamen.server.aggregators.FunctionRule` wraps a callable. The leaves that keep state
across rounds are listed in :data:`STATEFUL` (every other registered rule and pre-aggregator is a
pure function of the round's stack; ``tests/server/test_checkpoint_rules.py`` holds this for every
registered name by running two rounds with and without a checkpoint in between):

- central DP: the accountant's released rounds and ε (the noise of round ``r`` is seeded by
  ``(seed, r)``, so the same rounds-done gives the same noise);
- ``centered_clipping``: the previous aggregate (the next centre);
- ``bucketing`` and ``bristle`` (server mode): their random generators;
- ``frl``: the initial sorted scores, fixed by the first round.

Arrays go into the :class:`Snapshot`; the JSON tree records each node's kind, and a restore into a
differently shaped rule is refused (:class:`~stamen.server.checkpoint.CheckpointError`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stamen.server.aggregators import ComposedAggregator, FunctionRule
from stamen.server.aggregators.bristle import BristleRule
from stamen.server.aggregators.bucketing import Bucketing
from stamen.server.aggregators.centered_clipping import CenteredClipping
from stamen.server.aggregators.frl import FRLVote
from stamen.server.checkpoint import CheckpointError
from stamen.server.privacy.central import CentralDPRule

Tree = dict[str, Any]


@dataclass
class Snapshot:
    """The arrays of a checkpoint being written or read, by key (``<part>/<name>``)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # put_weights' models: prefix -> names

    def put(self, key: str, value: np.ndarray) -> str:
        """Store ``value`` (copied, unless it cannot change: a read-only array owning its memory or
        viewing ``bytes``, such as a model history's version) under ``key``; returns the key (a
        duplicate is a bug)."""
        if key in self.arrays:
            raise ValueError(f"checkpoint array {key!r} written twice")
        frozen = isinstance(value, np.ndarray) and not value.flags.writeable
        if frozen and (value.base is None or isinstance(value.base, bytes)):
            self.arrays[key] = value
        else:
            self.arrays[key] = np.array(value, copy=True)
        return key

    def get(self, key: object) -> np.ndarray:
        """The array stored under ``key``; a missing one is a corrupt checkpoint."""
        if not isinstance(key, str) or key not in self.arrays:
            raise CheckpointError(f"checkpoint is corrupt: array {key!r} is missing")
        return self.arrays[key]

    def put_weights(self, prefix: str, weights: Any) -> list[str]:
        """Store a name -> array mapping under ``prefix``; returns the names in their order."""
        names = list(weights)
        for name in names:
            self.put(f"{prefix}{name}", np.asarray(weights[name]))
        self.groups[prefix] = names
        return names

    def get_weights(self, prefix: str, names: object) -> dict[str, np.ndarray]:
        """The mapping stored by :meth:`put_weights`."""
        if not isinstance(names, list):
            raise CheckpointError(f"checkpoint is corrupt: tensor names of {prefix!r} are {names!r}")
        return {str(n): self.get(f"{prefix}{n}") for n in names}


def rng_state(rng: np.random.Generator) -> Tree:
    """A generator's full state (JSON: the bit generator's name and integers)."""
    return dict(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: object) -> None:
    """Put back a state from :func:`rng_state` (refused if it is not this kind of generator)."""
    try:
        rng.bit_generator.state = state  # type: ignore[assignment]
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint is corrupt: random generator state: {exc}") from None


def _clipping(rule: CenteredClipping, snap: Snapshot, prefix: str) -> Tree:
    return {"center": None if rule.center is None else snap.put(prefix + "center", rule.center)}


def _set_clipping(rule: CenteredClipping, tree: Tree, snap: Snapshot, prefix: str) -> None:
    del prefix
    center = tree.get("center")
    rule.center = None if center is None else np.asarray(snap.get(center), np.float32)


def _frl(rule: FRLVote, snap: Snapshot, prefix: str) -> Tree:
    if rule.init_sorted is None:
        return {"init_sorted": None}
    return {"init_sorted": snap.put_weights(prefix + "init/", rule.init_sorted)}


def _set_frl(rule: FRLVote, tree: Tree, snap: Snapshot, prefix: str) -> None:
    names = tree.get("init_sorted")
    rule.init_sorted = None if names is None else snap.get_weights(prefix + "init/", names)


def _rng_of(attr: str) -> tuple[Callable[..., Tree], Callable[..., None]]:
    def capture(rule: Any, snap: Snapshot, prefix: str) -> Tree:
        del snap, prefix
        return {"rng": rng_state(getattr(rule, attr))}

    def restore(rule: Any, tree: Tree, snap: Snapshot, prefix: str) -> None:
        del snap, prefix
        set_rng_state(getattr(rule, attr), tree.get("rng"))

    return capture, restore


STATEFUL: dict[type, tuple[Callable[..., Tree], Callable[..., None]]] = {
    CenteredClipping: (_clipping, _set_clipping),
    FRLVote: (_frl, _set_frl),
    Bucketing: _rng_of("rng"),
    BristleRule: _rng_of("_rng"),
}
"""Leaf types with cross-round state: ``(capture, restore)``."""


def capture_rule(rule: object, snap: Snapshot, prefix: str = "rule/") -> Tree:
    """The JSON tree of ``rule``'s state (its arrays go into ``snap`` under ``prefix``)."""
    if isinstance(rule, CentralDPRule):
        dp = {"rounds_done": rule.dp.rounds_done, "epsilon": rule.dp.epsilon}
        return {"kind": "central_dp", "dp": dp, "inner": capture_rule(rule.inner, snap, prefix + "inner/")}
    if isinstance(rule, ComposedAggregator):
        pre = [capture_rule(p, snap, f"{prefix}pre{i}/") for i, p in enumerate(rule.pre)]
        return {"kind": "composed", "pre": pre, "rule": capture_rule(rule.rule, snap, prefix + "rule/")}
    if isinstance(rule, FunctionRule):
        return capture_rule(rule.fn, snap, prefix)
    for cls, (capture, _) in STATEFUL.items():
        if isinstance(rule, cls):
            return {"kind": cls.__name__, **capture(rule, snap, prefix)}
    return {"kind": "stateless"}


def restore_rule(rule: object, tree: object, snap: Snapshot, prefix: str = "rule/") -> None:
    """Put the state captured by :func:`capture_rule` back into a freshly built ``rule``."""
    want = capture_rule(rule, Snapshot(), prefix)["kind"]
    if not isinstance(tree, dict) or tree.get("kind") != want:
        got = tree.get("kind") if isinstance(tree, dict) else tree
        raise CheckpointError(f"checkpoint holds rule state of kind {got!r}; this run's rule is {want!r}")
    if isinstance(rule, CentralDPRule):
        rule.dp.rounds_done = _count(tree["dp"].get("rounds_done"))
        rule.dp.epsilon = float(tree["dp"].get("epsilon", 0.0))
        restore_rule(rule.inner, tree.get("inner"), snap, prefix + "inner/")
    elif isinstance(rule, ComposedAggregator):
        pre = tree.get("pre")
        if not isinstance(pre, list) or len(pre) != len(rule.pre):
            raise CheckpointError(
                f"checkpoint holds {pre!r} pre-aggregator states; the run has {len(rule.pre)}"
            )
        for i, (p, t) in enumerate(zip(rule.pre, pre, strict=True)):
            restore_rule(p, t, snap, f"{prefix}pre{i}/")
        restore_rule(rule.rule, tree.get("rule"), snap, prefix + "rule/")
    elif isinstance(rule, FunctionRule):
        restore_rule(rule.fn, tree, snap, prefix)
    else:
        for cls, (_, restore) in STATEFUL.items():
            if isinstance(rule, cls):
                restore(rule, tree, snap, prefix)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"checkpoint is corrupt: a count is {value!r}")
    return value
