"""Binding a device's update-signing key to its authenticated node identity.

A deployed SuperNode authenticates to the SuperLink with its registered ECDSA (NIST P-384) key;
the SuperLink then attributes every reply to that node (the ServerApp sees the node's registered
public key in ``Grid.get_nodes()``). The device signs its update envelopes with an Ed25519 key of
its own (:class:`~stamen.protocols.signing.Signer`). Its *endorsement* — made once, at provisioning,
with the node's ECDSA key — is an ECDSA-SHA384 signature over ``CONTEXT + raw Ed25519 public key``.
The device sends the public key and the endorsement with each update; the server accepts an update
only when the endorsement verifies against the key the SuperLink authenticated the reply with, and
the envelope verifies against the endorsed key. So an envelope signed by node A is refused when it
arrives from node B, and no update key can be used without its node's key.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import SignatureError

__all__ = ["CONTEXT", "endorse", "load_node_key", "verify_endorsement"]

CONTEXT = b"stamen/update-signing-key/v1\x00"
MAX_ENDORSEMENT_BYTES = 256  # a DER ECDSA P-384 signature is at most 104 bytes


def endorse(node_key: ec.EllipticCurvePrivateKey, update_public: bytes) -> bytes:
    """The node key's endorsement of the raw 32-byte Ed25519 public key ``update_public``."""
    if len(update_public) != 32:
        raise SignatureError("an update-signing public key is 32 raw bytes (Ed25519)")
    return node_key.sign(CONTEXT + update_public, ec.ECDSA(hashes.SHA384()))


def verify_endorsement(node_public_pem: bytes, update_public: bytes, endorsement: bytes) -> None:
    """Check that the node whose registered public key is ``node_public_pem`` (PEM SPKI, as Flower
    stores it) endorsed ``update_public``; ``SignatureError`` otherwise."""
    if len(update_public) != 32 or not 0 < len(endorsement) <= MAX_ENDORSEMENT_BYTES:
        raise SignatureError("malformed update-key endorsement")
    try:
        key = serialization.load_pem_public_key(node_public_pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"the node's registered key does not load: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("the node's registered key is not an EC key")
    try:
        key.verify(endorsement, CONTEXT + update_public, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError("the update-signing key is not endorsed by this node's registered key") from None


def load_node_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """A node's OpenSSH (or PEM) ECDSA private key; ``SignatureError`` when it is not one."""
    try:
        key = (
            serialization.load_ssh_private_key(data, password=None)
            if data.lstrip().startswith(b"-----BEGIN OPENSSH")
            else serialization.load_pem_private_key(data, password=None)
        )
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a node private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError("a node key is an ECDSA key")
    return key
