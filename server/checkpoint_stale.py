"""The staleness rules' state in a checkpoint: the ``gi`` compensation policy's switch-back rule
(the version it switches at, the streak towards it), its counters and its warm-start cache
(the last reconstruction of each recent client). The other policies (``direct``, ``weighted``,
``dcasgd``) hold nothing between updates.

A run's rules may hold two GI policies: ``server.compensation = "gi"`` and the one
``server.stale_policy = "convert"`` builds when the compensation is ``direct`` (the same object
when both are ``gi``); each is stored under its role.

A checkpoint written before this part existed has no ``stale`` key: it still resumes, with one
warning, the GI policy starting afresh (converting, no warm starts), so the resumed run is a valid
run but not the uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stamen.server.checkpoint import CheckpointError
from stamen.server.checkpoint_rules import Snapshot, Tree
from stamen.server.staleness.gi_policy import GIConversionPolicy, WarmEntry

log = logging.getLogger("stamen.server")
KEY = "stale"  # the key of this part in a driver's checkpoint tree


def gi_policies(stale: object) -> dict[str, GIConversionPolicy]:
    """The GI policies of a run's :class:`~stamen.server.staleness.handling.StaleHandling`, by role
    (``policy``, ``convert``; a policy serving both roles once)."""
    found: dict[str, GIConversionPolicy] = {}
    for role in ("policy", "convert_policy"):
        p = getattr(stale, role, None)
        if isinstance(p, GIConversionPolicy) and all(p is not q for q in found.values()):
            found[role] = p
    return found


def capture_stale(stale: object, snap: Snapshot, prefix: str = "gi/") -> Tree | None:
    """Every GI policy's state (warm-start arrays into ``snap``); None without one."""
    policies = gi_policies(stale)
    if not policies:
        return None
    tree: Tree = {}
    for role, p in policies.items():
        warm = []
        for client, x, logits, loss in p.warm_cache():
            names = [snap.put(f"{prefix}{role}/{client}/{part}", a) for part, a in (("x", x), ("y", logits))]
            warm.append({"client": client, "arrays": names, "loss": loss})
        state = p.state()
        counts = {k: state[k] for k in p.counts}
        tree[role] = {
            "counts": counts,
            "switch_at": state["switch_at"],
            "streak": p.switch.streak,
            "warm": warm,
        }
    return tree


def restore_stale(stale: object, driver_tree: Mapping[str, Any], snap: Snapshot) -> None:
    """Put :func:`capture_stale` (``driver_tree["stale"]``) back into the run's fresh policies."""
    policies = gi_policies(stale)
    if KEY not in driver_tree:  # written before the GI state was checkpointed
        if policies:
            log.warning(
                "checkpoint predates the saved GI compensation state: its switch-back rule, counters and "
                "warm starts start afresh, so the resumed run can differ from an uninterrupted one"
            )
        return
    tree = driver_tree[KEY]
    if (tree is None) != (not policies) or (tree is not None and set(tree) != set(policies)):
        raise CheckpointError("checkpoint and run disagree on the GI compensation policies")
    for role, p in policies.items():
        _restore_one(p, tree[role], snap)


def _restore_one(policy: GIConversionPolicy, tree: object, snap: Snapshot) -> None:
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint is corrupt: GI compensation state is {tree!r}")
    try:
        warm = [_warm_entry(e, snap) for e in tree["warm"]]
        policy.resume(tree["counts"], tree["switch_at"], tree["streak"], warm)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint is corrupt: GI compensation state: {exc}") from None


def _warm_entry(entry: Mapping[str, Any], snap: Snapshot) -> WarmEntry:
    x, logits = entry["arrays"]
    return int(entry["client"]), snap.get(x), snap.get(logits), float(entry["loss"])
