"""The parts of a run's server state besides the rule (:mod:`.checkpoint_rules`): model history,
server-side accountants, the edge downlink, Bristle's peer relay, the GI compensation policy
(:mod:`.checkpoint_stale`), and the whole of the synchronous and asynchronous drivers' state.

Each part is a ``capture(obj, snap) -> JSON tree`` (arrays into the
:class:`~stamen.server.checkpoint_rules.Snapshot`) and a ``restore(obj, tree, snap)`` into the
freshly assembled object of a resumed run. What the configuration rebuilds (bounds, signing key,
codec) is not stored; what the run accumulated is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stamen.server.bristle.relay import PeerMode
from stamen.server.checkpoint import CheckpointError, checkpoint_path
from stamen.server.checkpoint_rules import Snapshot, Tree, capture_rule, restore_rule
from stamen.server.checkpoint_stale import KEY as STALE
from stamen.server.checkpoint_stale import capture_stale, restore_stale
from stamen.server.edge_downlink import EdgeDownlink
from stamen.server.rqm import RqmRoundAccountant
from stamen.server.staleness.history import ModelHistory


def _need(tree: object, key: str, kind: type | tuple[type, ...]) -> Any:
    """``tree[key]``, which must be of ``kind`` (a corrupt checkpoint otherwise)."""
    value = tree.get(key) if isinstance(tree, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"checkpoint is corrupt: {key!r} is {value!r}")
    return value


# ---- model history ----------------------------------------------------------------------------


def capture_history(history: ModelHistory | None, snap: Snapshot, prefix: str = "history/") -> Tree | None:
    """The versions a bounded history holds (oldest first) and their weights."""
    if history is None:
        return None
    versions = history.versions()
    names = [snap.put_weights(f"{prefix}{v}/", history.get(v)) for v in versions]
    return {"versions": versions, "names": names}


def restore_history(
    history: ModelHistory | None, tree: object, snap: Snapshot, prefix: str = "history/"
) -> ModelHistory | None:
    """A history with ``history``'s bounds holding the captured versions (``None`` stays None)."""
    if history is None or tree is None:
        if (history is None) != (tree is None):
            raise CheckpointError("checkpoint and run disagree on keeping a model history")
        return None
    fresh = ModelHistory(max_versions=history.max_versions, max_bytes=history.max_bytes)
    versions, names = _need(tree, "versions", list), _need(tree, "names", list)
    if len(versions) != len(names):
        raise CheckpointError("checkpoint is corrupt: history versions and names differ in length")
    for v, n in zip(versions, names, strict=True):
        fresh.put(v, snap.get_weights(f"{prefix}{v}/", n))
    return fresh


# ---- accountants, downlink, peer relay --------------------------------------------------------


def capture_accountant(accountant: object) -> Tree | None:
    """RQM's per-client participation counts (the only server-side accountant with state here;
    central DP's lives in the rule)."""
    if accountant is None:
        return None
    if not isinstance(accountant, RqmRoundAccountant):
        raise CheckpointError(f"cannot checkpoint accountant {type(accountant).__name__}")
    return {"participations": accountant.participations}


def restore_accountant(accountant: object, tree: object) -> None:
    """Put the participation counts back."""
    if accountant is None and tree is None:
        return
    if not isinstance(accountant, RqmRoundAccountant) or tree is None:
        raise CheckpointError("checkpoint and run disagree on the server-side accountant")
    counts = _need(tree, "participations", dict)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        raise CheckpointError("checkpoint is corrupt: RQM participation counts")
    accountant.set_participations(counts)


def charge_accountant(tree: Any, clients: Sequence[str]) -> Tree | None:
    """:func:`capture_accountant`'s tree with one more message charged per entry of ``clients``
    (None: no server-side accountant)."""
    if tree is None:
        return None
    counts = Counter(_need(tree, "participations", dict))
    counts.update(clients)
    return {**tree, "participations": dict(counts)}


def capture_downlink(downlink: object, snap: Snapshot, prefix: str = "downlink/") -> Tree | None:
    """An edge downlink's per-device held (and earlier held) versions, their weights and last
    delta versions."""
    if not isinstance(downlink, EdgeDownlink):
        return None
    held, earlier, versions = downlink.tracker.snapshot()
    names = {h: snap.put_weights(f"{prefix}{h}/", w) for h, w in versions.items()}
    return {"held": held, "earlier": earlier, "versions": names, "last": downlink.last_versions}


def restore_downlink(downlink: object, tree: object, snap: Snapshot, prefix: str = "downlink/") -> None:
    """Put an edge downlink's state back (the signing key and codec come from the run)."""
    if not isinstance(downlink, EdgeDownlink) or tree is None:
        if isinstance(downlink, EdgeDownlink) or tree is not None:
            raise CheckpointError("checkpoint and run disagree on the edge downlink")
        return
    names = _need(tree, "versions", dict)
    versions = {h: snap.get_weights(f"{prefix}{h}/", n) for h, n in names.items()}
    earlier = _need(tree, "earlier" if isinstance(tree, dict) and "prev" not in tree else "prev", dict)
    if not all(isinstance(h, str) or _hashes(h) for h in earlier.values()):
        raise CheckpointError("checkpoint is corrupt: the edge downlink's earlier versions")
    try:
        downlink.tracker.restore(_need(tree, "held", dict), earlier, versions)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint is corrupt: {exc}") from None
    downlink.restore_last(_need(tree, "last", dict))


def _hashes(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(h, str) for h in value)


def capture_mode(mode: object, snap: Snapshot, prefix: str = "relay/") -> Tree | None:
    """Bristle's peer relay: last round's shared layers and every node's declared classes."""
    if not isinstance(mode, PeerMode):
        return None
    relay = mode.relay
    shared = [snap.put(f"{prefix}{j}", w) for j, w in sorted(relay.shared.items())]
    return {"shared": shared, "declared": {str(j): list(c) for j, c in relay.declared.items()}}


def restore_mode(mode: object, tree: object, snap: Snapshot, prefix: str = "relay/") -> None:
    """Put the peer relay's state back."""
    if not isinstance(mode, PeerMode) or tree is None:
        if isinstance(mode, PeerMode) or tree is not None:
            raise CheckpointError("checkpoint and run disagree on Bristle's peer mode")
        return
    keys = _need(tree, "shared", list)
    mode.relay.shared = {int(str(k)[len(prefix) :]): np.asarray(snap.get(k), np.float32) for k in keys}
    declared = _need(tree, "declared", dict)
    mode.relay.declared = {int(j): tuple(int(c) for c in cs) for j, cs in declared.items()}


# ---- the drivers ------------------------------------------------------------------------------


def capture_common(driver: Any, snap: Snapshot) -> Tree:
    """What both drivers hold: rule, accountant, worst client ε, history, downlink, GI policy."""
    return {
        "rule": capture_rule(driver.rule, snap),
        "accountant": capture_accountant(driver.accountant),
        "worst_client_eps": driver.worst_client_eps,
        "history": capture_history(driver.history, snap),
        "downlink": capture_downlink(driver.downlink, snap),
        STALE: capture_stale(driver.stale, snap),
    }


def restore_common(driver: Any, tree: Mapping[str, Any], snap: Snapshot) -> None:
    """Put :func:`capture_common` back into a freshly assembled driver."""
    restore_rule(driver.rule, tree.get("rule"), snap)
    restore_accountant(driver.accountant, tree.get("accountant"))
    eps = tree.get("worst_client_eps")
    driver.worst_client_eps = None if eps is None else float(eps)
    driver.history = restore_history(driver.history, tree.get("history"), snap)
    restore_downlink(driver.downlink, tree.get("downlink"), snap)
    restore_stale(driver.stale, tree, snap)


def capture_sync(driver: Any, snap: Snapshot) -> Tree:
    """A :class:`~stamen.server.driver.RoundDriver` between rounds."""
    trips = dict(sorted(driver.budget.trips.items()))  # tasks sent per client (privacy cap)
    return {**capture_common(driver, snap), "mode": capture_mode(driver.mode, snap), "trips": trips}


def restore_sync(driver: Any, tree: Mapping[str, Any], snap: Snapshot) -> None:
    """Put :func:`capture_sync` back. A checkpoint written before the tasks per client were kept is
    refused where they bound privacy (a trip cap; local DP's ε, :attr:`RoundDriver.client_bound`:
    :func:`lacks_trips`); otherwise it resumes with none counted."""
    restore_common(driver, tree, snap)
    restore_mode(driver.mode, tree.get("mode"), snap)
    if "trips" not in tree and (driver.budget.cap > 0 or getattr(driver, "client_bound", None) is not None):
        raise lacks_trips(driver)
    trips = _need(tree, "trips", dict) if "trips" in tree else {}
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in trips.values()):
        raise CheckpointError("checkpoint is corrupt: tasks sent per client")
    driver.budget.trips = Counter({str(c): n for c, n in trips.items()})


def trips_bound_privacy(driver: Any) -> bool:
    """Whether the tasks sent to each client bound this run's client-side privacy: a trip cap, a
    server-side accountant (RQM), or local DP's worst-client ε (``client_bound``)."""
    return driver.budget.cap > 0 or driver.accountant is not None or driver.client_bound is not None


def lacks_trips(driver: Any) -> CheckpointError:
    """The error for a checkpoint without the tasks sent to each client, in a run whose client-side
    privacy they bound (a trip cap; asynchronous RQM; local DP's reported ε): no safe count can be
    rebuilt from it, and zero would let every client be sent its whole budget again."""
    where = getattr(driver.resume, "state_dir", None)
    return CheckpointError(
        f"{'the checkpoint' if where is None else checkpoint_path(where)} lacks the tasks sent to "
        "each client (written by an older stamen), which bound this run's client-side privacy: "
        "resuming would restart them at zero; start the run again with a new state-dir"
    )
