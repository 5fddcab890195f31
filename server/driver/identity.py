"""Per-reply update verifiers bound to the node the SuperLink authenticated.

A deployed SuperNode authenticates with its registered ECDSA key; ``Grid.get_nodes()`` gives the
ServerApp each node's registered public key (PEM SPKI). A device signs its update envelopes with an
Ed25519 key of its own and sends, beside the envelope, that key and the node key's endorsement of it
(:mod:`stamen.protocols.identity`). :class:`NodeIdentities` turns the reply's source node and that
record into a :class:`~stamen.protocols.Verifier` trusting exactly the one endorsed key, so an
envelope is accepted only when it is signed by the key the *sending* node endorsed: a device that
signs with another node's key, or forwards another node's envelope, is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flwr.app import RecordDict

from stamen.protocols import SignatureError, Verifier, keys
from stamen.protocols.identity import verify_endorsement

MAX_CACHED = 4096  # endorsed keys kept verified (one per node and update key)


class NodeInfoLike(Protocol):
    """What Flower's ``NodeInfo`` carries that we use."""

    node_id: int
    public_key: bytes


class NodeIdentities:
    """Node id -> registered key, and the verifier of a node's endorsed update key.

    Parameters
    ----------
    nodes : callable
        ``grid.get_nodes``: the run's nodes with their registered public keys (re-read when a reply
        comes from a node not seen yet).
    """

    def __init__(self, nodes: Callable[[], Iterable[NodeInfoLike]]) -> None:
        self._nodes = nodes
        self._pem: dict[int, bytes] = {}
        self._ok: dict[tuple[int, bytes, bytes], Verifier] = {}

    def registered_key(self, node_id: int) -> bytes:
        """The PEM public key node ``node_id`` registered; ``SignatureError`` when it has none."""
        if node_id not in self._pem:
            self._pem.update({int(n.node_id): bytes(n.public_key) for n in self._nodes()})
        pem = self._pem.get(node_id, b"")
        if not pem:
            raise SignatureError(f"node {node_id} has no registered public key (is SuperNode auth on?)")
        return pem

    def verifier(self, node_id: int, content: RecordDict) -> Verifier:
        """The verifier for node ``node_id``'s update in ``content``; ``SignatureError`` when the reply
        carries no identity record or its endorsement does not verify against the node's key."""
        update_key, endorsement = identity_of(content)
        cache_key = (node_id, update_key, endorsement)
        if cache_key not in self._ok:
            verify_endorsement(self.registered_key(node_id), update_key, endorsement)
            if len(self._ok) >= MAX_CACHED:
                self._ok.clear()
            self._ok[cache_key] = Verifier([update_key])
        return self._ok[cache_key]


def identity_of(content: RecordDict) -> tuple[bytes, bytes]:
    """``(update public key, endorsement)`` from a reply's identity record."""
    record = content.config_records.get(keys.IDENTITY)
    if record is None:
        raise SignatureError(f"the reply carries no {keys.IDENTITY!r} record (unsigned device)")
    return _bytes(record, keys.IDENTITY_KEY), _bytes(record, keys.IDENTITY_ENDORSEMENT)


def _bytes(record: Any, name: str) -> bytes:
    value = record.get(name)
    if not isinstance(value, bytes):
        raise SignatureError(f"identity record field {name!r} must be bytes")
    return value
