"""The cached downlink: a client that holds an earlier global model gets only what changed since.

``clients.downlink = "cached"`` (the default, ``"auto"``, for LoRA / Fed-SB adapters and the sparse
trainer, whose frozen base is 97-99 % of the model). A client gets a
:class:`~stamen.protocols.patch.ModelPatch` from the version it holds to the round's model: the
changed tensors' (or entries') target values, bit for bit, so the client's model equals what the
full downlink gives, and the client checks it by ``model_hash``.

The server keeps no copy of old models: a :class:`VersionChain` records, for each new global model,
*which* entries changed from the previous one (per tensor: all, or the flat indices), and the patch
takes its values from the target. The entries that differ between two versions are within the union
of the steps between them, in either direction (a client the simulation delays trains from an older
version than it holds).

A client the server has not heard from gets a patch against the model every client builds itself
from the task (``local``: for LoRA the pretrained base with seeded adapters and head, which is the
run's initial model; Fed-SB's data-initialized factors and later rounds are in the patch). What the
server believes a client holds is confirmed by the client's reply: a client whose reply is not an
update (a lost reply, a crash, or a cache miss: its own build differs, or it restarted and lost
its model) gets the full model next time, and keeps it. A client holding a version older than the
chain remembers is treated as one not heard from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from stamen.protocols import model_hash
from stamen.protocols.flower import weights_nbytes
from stamen.protocols.patch import ModelPatch, make_patch
from stamen.server.driver.types import Payload, Reply, TrainTask, Weights

log = logging.getLogger("stamen.server")
Changes = dict[str, np.ndarray | None]  # tensor -> changed flat indices, None = all of it


def changed_entries(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> Changes:
    """Per tensor whose bits differ: its changed flat indices (``None`` when more than half changed).

    Bitwise (``-0.0`` differs from ``0.0``; a NaN equals itself), so a patch reproduces the bits.
    """
    if set(old) != set(new):
        raise ValueError(f"models differ in tensors: {sorted(set(old) ^ set(new))[:3]}")
    out: Changes = {}
    for name in sorted(new):
        a, b = np.asarray(old[name], np.float32), np.asarray(new[name], np.float32)
        if a.shape != b.shape:
            raise ValueError(f"tensor {name!r} changed shape {a.shape} -> {b.shape}")
        idx = np.flatnonzero(a.reshape(-1).view(np.uint32) != b.reshape(-1).view(np.uint32))
        if idx.size:
            out[name] = None if 2 * idx.size > a.size else idx
    return out


def union(steps: Sequence[Changes]) -> Changes:
    """The entries changed by any of ``steps`` (``None`` absorbs indices)."""
    out: Changes = {}
    for step in steps:
        for name, idx in step.items():
            if name in out and out[name] is None:
                continue
            prev = out.get(name)
            out[name] = None if idx is None else (idx if prev is None else np.union1d(prev, idx))
    return out


class VersionChain:
    """The global models a run went through, by hash, and the entries each step changed.

    Parameters
    ----------
    max_steps : int, default 64
        Steps remembered; a client holding an older version gets the full model.
    """

    def __init__(self, max_steps: int = 64) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self._hashes: list[str] = []
        self._steps: list[Changes] = []  # _steps[i]: from _hashes[i] to _hashes[i + 1]
        self._last: Weights | None = None

    def add(self, digest: str, weights: Weights) -> None:
        """Record ``weights`` (hash ``digest``) as the next version unless already known."""
        if digest in self._hashes:
            return
        if self._last is not None:
            self._steps.append(changed_entries(self._last, weights))
        self._hashes.append(digest)
        self._last = weights
        if len(self._steps) > self.max_steps:
            del self._hashes[0], self._steps[0]

    def __contains__(self, digest: object) -> bool:
        return digest in self._hashes

    def between(self, held: str, target: str) -> Changes:
        """Entries that may differ between versions ``held`` and ``target`` (both known)."""
        i, j = sorted((self._hashes.index(held), self._hashes.index(target)))
        return union(self._steps[i:j])


class CachedDownlink:
    """A patch from the version a client holds, or from the model it builds itself; else the full
    model.

    Parameters
    ----------
    local : (hash, weights) or None
        The model every client builds from the task (the pretrained base with seeded adapters and
        head, :func:`~stamen.task.local_base.local_base`): a client the server has not heard
        from gets a patch against it. None: such a client gets the full model.
    max_steps : int, default 64
        Versions of history (:class:`VersionChain`).
    """

    def __init__(self, local: tuple[str, Weights] | None = None, max_steps: int = 64) -> None:
        self.chain = VersionChain(max_steps)
        self.local = local
        self._held: dict[str, str] = {}  # client -> hash it confirmed holding (its last update)
        self._sent: dict[str, str] = {}  # client -> hash of what it was last sent, until it replies
        self._full_next: set[str] = set()  # clients whose last reply was not an update
        self._hash: tuple[tuple[int, int], str] | None = None
        self._patches: dict[tuple[str, str], ModelPatch] = {}  # (base, target) -> patch, this round

    def payload(self, client: str, rnd: int, weights: Weights) -> Payload:
        """A patch from the version ``client`` is known to hold, else (a client not heard from)
        from the model it builds itself, else (its last reply was not an update) the full model
        with a ``"cache"`` mark; and the hash the client will train from."""
        digest = self._digest(rnd, weights)
        self.chain.add(digest, weights)
        held = self._held.pop(client, None)  # unconfirmed until the client's reply
        self._sent[client] = digest
        if held is not None and held in self.chain:
            return Payload(None, None, digest, self._patch(held, digest, weights))
        if self.local is not None and client not in self._full_next:
            return Payload(None, None, digest, self._patch(self.local[0], digest, weights))
        return Payload(weights, None, digest, ModelPatch("cache", "", digest))

    def _patch(self, base: str, digest: str, weights: Weights) -> ModelPatch:
        key = (base, digest)
        if key not in self._patches:
            if self.local is not None and base == self.local[0] and base not in self.chain:
                changes = changed_entries(self.local[1], weights)
            else:
                changes = self.chain.between(base, digest)
            self._patches[key] = make_patch(weights, changes, base, digest)
        return self._patches[key]

    def _digest(self, rnd: int, weights: Weights) -> str:
        key = (rnd, id(weights))  # the weights stay alive for the whole round
        if self._hash is None or self._hash[0] != key:
            self._hash, self._patches = (key, model_hash(weights)), {}
        return self._hash[1]

    def nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """Serialized bytes (Flower's ``.npy`` per array): full models plus patches."""
        sizes: dict[int, int] = {}
        total = 0
        for task in tasks:
            if task.weights is not None:
                key = id(task.weights)
                if key not in sizes:
                    sizes[key] = weights_nbytes(task.weights)
                total += sizes[key]
            elif task.patch is not None:
                total += patch_nbytes(task.patch)
        return total

    def observe(self, replies: Sequence[Reply]) -> None:
        """A client that replied with an envelope holds what it was sent; any other reply (an
        error, a cache miss, a stock Flower client's plain weights: it keeps nothing) gets the full
        model next time."""
        for reply in replies:
            sent = self._sent.pop(reply.client, None)
            if sent is None:
                continue
            if reply.envelope is not None:
                self._held[reply.client] = sent
                self._full_next.discard(reply.client)
            else:
                self._full_next.add(reply.client)
                log.info("client %s: %s; it gets the full model next time", reply.client, reply.error)


def patch_nbytes(patch: ModelPatch) -> int:
    """Bytes a patch's arrays take as Flower ``Array``s (0 for a ``"cache"`` mark)."""
    arrays = patch.to_arrays()
    return weights_nbytes(arrays) if arrays else 0
