"""Server side of the edge client mode: signed *delta* downlinks against each device's version.

In ``clients.runtime = "edge"`` the device's model lives in a :class:`stamen.edge.EdgeRuntime`
store. Instead of the full weights, the server sends every sampled device a signed envelope with
``global - held`` (encoded with ``codec.downlink``), where ``held`` is exactly what that device holds:
the server replays the device's arithmetic (``held + decoded``) so it knows the device's next hash
and can check the base hash of the device's reply. Devices holding the same weights share one copy
(keyed by hash), so memory grows with the number of distinct versions in the field, not devices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from stamen.protocols import CodecSpec, Signer, is_model_hash, model_hash
from stamen.protocols.delta import create_delta_with_result, create_replacement
from stamen.server.driver.types import Payload, Reply, TrainTask, client_index
from stamen.task.seeds import client_seed

Weights = dict[str, np.ndarray]
DEVICE_RETAINS = 3  # versions an edge store retains by default (``EdgeRuntime(keep=3)``)
log = logging.getLogger("stamen.server")


class DeviceDownlink:
    """What each device holds, and the signed delta that brings it to the current global model.

    Parameters
    ----------
    initial : mapping of str to ndarray
        The model every device was provisioned with (version 0).
    signer : Signer
        The key the devices trust.
    codec : str
        Downlink codec spec (``"dense"`` by default; lossy codecs are allowed: the tracker follows
        what the device really computes).
    model_id : str
        Recorded in the envelope; a device refuses updates for another model.
    earlier : int
        How many versions each device held before its current one stay on hand (default 1: the
        one before its last delta, which it may not have applied). A deployed server keeps
        :data:`DEVICE_RETAINS`, what a device's store retains, so a device that repaired or
        rolled back to a retained version still gets a delta, not the whole model.
    """

    def __init__(
        self, initial: Mapping[str, np.ndarray], signer: Signer, codec: str, model_id: str, earlier: int = 1
    ) -> None:
        if earlier < 1:
            raise ValueError(f"earlier must be >= 1, got {earlier}")
        self.signer, self.model_id, self.earlier = signer, model_id, earlier
        self.codec = CodecSpec.parse(codec)
        first = {k: np.asarray(initial[k], np.float32) for k in sorted(initial)}
        self._initial_hash = model_hash(first)
        self._weights: dict[str, Weights] = {self._initial_hash: first}
        self._held: dict[str, str] = {}
        self._earlier: dict[str, tuple[str, ...]] = {}  # what each device held before, newest first

    def held_hash(self, device: str) -> str:
        """Hash of the weights ``device`` holds (the provisioned model until its first update)."""
        return self._held.get(device, self._initial_hash)

    def make_update(
        self, device: str, target: Mapping[str, np.ndarray], version: int, seed: int
    ) -> tuple[bytes, str]:
        """Signed envelope taking ``device`` from what it holds to ``target``; and its hash after.

        ``version`` must grow for each device (the server round does). A device whose weights the
        server does not hold (it reported a version the history dropped) gets a replacement.
        """
        held = self.held_hash(device)
        if held in self._weights:
            data, after, digest = create_delta_with_result(
                self._weights[held],
                target,
                self.codec,
                self.signer,
                version=version,
                model_id=self.model_id,
                sender="server",
                seed=seed,
                base_hash=held,
            )
        else:
            data, after, digest = create_replacement(
                target, self.signer, version=version, base_hash=held, model_id=self.model_id, sender="server"
            )
        self._weights.setdefault(digest, after)
        older = (held, *self._earlier.get(device, ()))  # newest first; only weights the server has
        before = dict.fromkeys(h for h in older if h in self._weights)
        self._earlier[device], self._held[device] = tuple(before)[: self.earlier], digest
        self._prune()
        return data, digest

    def snapshot(self) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Weights]]:
        """``(device -> hash it holds, device -> hashes it held before, newest first, hash ->
        weights)``: what a restarted server must know."""
        earlier = {d: list(h) for d, h in self._earlier.items()}
        return dict(self._held), earlier, {h: dict(w) for h, w in self._weights.items()}

    def restore(
        self,
        held: Mapping[str, str],
        earlier: Mapping[str, str | Sequence[str]],
        versions: Mapping[str, Mapping[str, np.ndarray]],
    ) -> None:
        """Put back a :meth:`snapshot` (an earlier hash may be one string: a checkpoint written
        before several were kept); every version must hash to its key and the provisioned model's
        must be among them (``ValueError`` if not). A held hash without weights (a device that
        reported a version the server never had) stays: its next update is a full replacement; an
        earlier one without weights is dropped (it could never serve as a delta's base)."""
        weights = {}
        for digest, w in versions.items():
            arrays = {k: np.asarray(w[k], np.float32) for k in sorted(w)}
            if model_hash(arrays) != digest:
                raise ValueError(f"edge downlink: a held version does not hash to {digest[:16]}...")
            weights[digest] = arrays
        held = {d: h for d, h in held.items() if is_model_hash(h)}  # a checkpoint of older code
        if self._initial_hash not in weights:
            raise ValueError(f"edge downlink: held versions {[self._initial_hash[:16]]} are missing")
        before = {}
        for device, hs in earlier.items():
            kept = tuple(h for h in ((hs,) if isinstance(hs, str) else hs) if h in weights)
            before[device] = kept[: self.earlier]
        self._weights, self._held, self._earlier = weights, dict(held), before
        self._prune()

    def resync(self, device: str, held: str) -> None:
        """``device`` reported holding ``held`` (it did not apply, or lost, its last delta): the next
        delta starts there, or is a full replacement when the server no longer has those weights. A
        report that is no model hash (lower-case hex SHA-256) is ignored: it would become the base
        hash of a signed envelope, which refuses it, and stop the run whenever the device is asked."""
        if not is_model_hash(held):
            log.warning("device %s reported holding %r, not a model hash: ignored", device, held[:80])
            return
        if held != self.held_hash(device):
            self._held[device] = held
            self._prune()

    def _prune(self) -> None:
        live = {*self._held.values(), *(h for hs in self._earlier.values() for h in hs), self._initial_hash}
        for digest in [d for d in self._weights if d not in live]:
            del self._weights[digest]


class EdgeDownlink:
    """The driver's downlink to edge devices: each gets a signed delta from what it holds.

    Parameters
    ----------
    tracker : DeviceDownlink
        What each device holds, and the signing key.
    seed : int
        Run seed; a device's delta for round ``r`` is seeded by ``client_seed(seed, r, index)``.
    """

    def __init__(self, tracker: DeviceDownlink, seed: int) -> None:
        self.tracker, self.seed = tracker, seed
        self._last: dict[str, int] = {}  # the delta version each device holds (it must grow)

    def payload(self, client: str, rnd: int, weights: Weights) -> Payload:
        """``(None, signed delta, hash the device holds after applying it)``. The delta's version is
        the round, or one past the device's last when an asynchronous run dispatches it again
        within one model version."""
        version = max(rnd, self._last.get(client, 0) + 1)
        self._last[client] = version
        seed = client_seed(self.seed, rnd, client_index(client))
        data, expected = self.tracker.make_update(client, weights, version, seed=seed)
        return Payload(None, data, expected)

    @property
    def last_versions(self) -> dict[str, int]:
        """The delta version each device was last sent (a resumed run continues above it)."""
        return dict(self._last)

    def restore_last(self, last: Mapping[str, int]) -> None:
        """Put back :attr:`last_versions` (a resumed run)."""
        self._last = {str(k): int(v) for k, v in last.items()}

    def nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """The deltas' sizes."""
        return sum(len(t.downlink or b"") for t in tasks)

    def observe(self, replies: Sequence[Reply]) -> None:
        """Devices that reported what they hold instead of an update are resynchronized."""
        for reply in replies:
            if reply.held is not None:
                log.info("device %s holds %s…; its next delta starts there", reply.client, reply.held[:12])
                self.tracker.resync(reply.client, reply.held)
