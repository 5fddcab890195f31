"""Ed25519 signing and verification of envelopes (``cryptography``).

A key is named by its *key id*: the first 8 hex characters of ``sha256(raw public key)``. The
envelope carries the key id, so a receiver that trusts several keys picks the right one without
trying them all, and an unknown key is rejected in microseconds. Signing covers the small header
(which holds the payload's SHA-256), not the payload itself: see ``research/edge.md`` §7.2.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureError

__all__ = ["KEY_ID_LENGTH", "SIGNATURE_LENGTH", "Signer", "Verifier", "key_id_for"]

KEY_ID_LENGTH = 8
SIGNATURE_LENGTH = 64
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def key_id_for(public_key_bytes: bytes) -> str:
    """Key id of a raw 32-byte Ed25519 public key: first 8 hex chars of its SHA-256."""
    return hashlib.sha256(public_key_bytes).hexdigest()[:KEY_ID_LENGTH]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(*_RAW)


class Signer:
    """Holds an Ed25519 private key and signs bytes.

    Parameters
    ----------
    private_key : Ed25519PrivateKey
        The signing key.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SignatureError("Signer needs an Ed25519PrivateKey")
        self._key = private_key
        self._key_id = key_id_for(self.public_key_bytes())

    @property
    def key_id(self) -> str:
        """8 lowercase hex characters naming the public key."""
        return self._key_id

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return _raw_public(self._key.public_key())

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], passphrase: bytes | None = None) -> Signer:
        """Load a PEM (PKCS#8) Ed25519 private key, encrypted with ``passphrase`` when given.

        Raises
        ------
        SignatureError
            If the file does not hold an Ed25519 private key (or the passphrase is wrong/missing).
        """
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{path}: not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def save(self, private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> None:
        """Write the private key (PEM PKCS#8, mode 0600) and the public key (PEM SPKI)."""
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # also when the file already existed
            fh.write(private_pem)
        public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        Path(public_path).write_bytes(public_pem)

    def sign(self, data: bytes) -> bytes:
        """64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)


def _public_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        try:
            return Ed25519PublicKey.from_public_bytes(bytes(key))
        except ValueError as exc:
            raise SignatureError(f"not an Ed25519 public key: {exc}") from None
    raise SignatureError("public keys must be Ed25519PublicKey or 32 raw bytes")


class Verifier:
    """Checks signatures against a set of trusted Ed25519 public keys.

    Parameters
    ----------
    public_keys : Iterable[Ed25519PublicKey | bytes]
        Trusted keys, as key objects or raw 32-byte public keys.

    Raises
    ------
    SignatureError
        If a key is malformed, or two different keys share a key id.
    """

    def __init__(self, public_keys: Iterable[Ed25519PublicKey | bytes]) -> None:
        self._keys: dict[str, tuple[bytes, Ed25519PublicKey]] = {}
        for item in public_keys:
            key = _public_key(item)
            raw = _raw_public(key)
            key_id = key_id_for(raw)
            if key_id in self._keys and self._keys[key_id][0] != raw:
                raise SignatureError(f"two trusted keys share the key id {key_id!r}")
            self._keys[key_id] = (raw, key)

    @classmethod
    def from_files(cls, *paths: str | os.PathLike[str]) -> Verifier:
        """Trust the PEM (SubjectPublicKeyInfo) Ed25519 public keys in ``paths``: every key in a
        file (an old and a new key side by side while rotating)."""
        keys = []
        for path in paths:
            blocks = _PEM_BLOCK.findall(Path(path).read_bytes())
            if not blocks:
                raise SignatureError(f"{path}: not a PEM public key: no PUBLIC KEY block")
            for block in blocks:
                try:
                    key = serialization.load_pem_public_key(block)
                except (ValueError, TypeError) as exc:
                    raise SignatureError(f"{path}: not a PEM public key: {exc}") from None
                if not isinstance(key, Ed25519PublicKey):
                    raise SignatureError(f"{path}: not an Ed25519 public key")
                keys.append(key)
        return cls(keys)

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of the trusted keys."""
        return frozenset(self._keys)

    def verify(self, key_id: str, data: bytes, signature: bytes) -> None:
        """Check ``signature`` over ``data`` with the trusted key ``key_id``.

        Raises
        ------
        SignatureError
            If the key id is unknown or the signature does not verify.
        """
        entry = self._keys.get(key_id)
        if entry is None:
            raise SignatureError(f"unknown signing key id {key_id!r}")
        if len(signature) != SIGNATURE_LENGTH:
            raise SignatureError(f"signature must be {SIGNATURE_LENGTH} bytes")
        try:
            entry[1].verify(bytes(signature), bytes(data))
        except InvalidSignature:
            raise SignatureError(f"bad signature for key id {key_id!r}") from None
