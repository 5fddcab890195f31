"""Key files: 0600 private keys written atomically, never over an existing file unless asked.

Three kinds of keys, each in the format its reader loads:

* node identity keys: ECDSA P-384 in OpenSSH format, what ``flower-supernode
  --auth-supernode-private-key`` loads (``load_ssh_private_key(data, None)``: Flower 1.41 cannot read
  an encrypted node key) and ``flwr supernode register`` reads (``node.key.pub``);
* the server's update-signing key: Ed25519 PEM PKCS#8, what
  :meth:`stamen.protocols.signing.Signer.from_file` loads, with the public half as PEM SPKI for
  :meth:`~stamen.protocols.signing.Verifier.from_files`; optionally passphrase-encrypted (load it
  with :func:`load_signer`);
* a device's own update-signing key: Ed25519 PEM PKCS#8 (``device-signing.pem``) with its node key's
  endorsement (``device-signing.endorsement``, :mod:`stamen.protocols.identity`): the device signs its
  updates with it, the server accepts them only from the node that endorsed it;
* TLS keys (:mod:`stamen.deploy.pki`): PEM PKCS#8, the CA key optionally encrypted.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from stamen.protocols.identity import endorse, load_node_key
from stamen.protocols.signing import Signer

__all__ = [
    "KeyFileExists",
    "device_update_key",
    "load_private_pem",
    "load_signer",
    "new_node_key",
    "new_secret",
    "node_public_openssh",
    "private_pem",
    "signing_key_files",
    "write_private",
    "write_public",
]

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
Owner = tuple[int, int]


class KeyFileExists(ValueError):
    """A key file is already there and overwriting was not asked for (``--force``)."""


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase is None:
        return serialization.NoEncryption()
    if len(passphrase) < 8:
        raise ValueError(f"a key passphrase needs at least 8 bytes, got {len(passphrase)}")
    return serialization.BestAvailableEncryption(passphrase)


def private_pem(key: PrivateKeyTypes, passphrase: bytes | None = None) -> bytes:
    """PEM PKCS#8 encoding of ``key``, encrypted with ``passphrase`` (>= 8 bytes) when given."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    )


def load_private_pem(path: Path, passphrase: bytes | None = None) -> PrivateKeyTypes:
    """Load a PEM private key; a wrong or missing passphrase raises ``ValueError`` naming the file."""
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except TypeError:
        raise ValueError(f"{path}: the key is encrypted: give its passphrase") from None
    except ValueError as exc:
        raise ValueError(f"{path}: cannot load the private key ({exc})") from None


def new_node_key() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-384 node identity key: (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return private, node_public_openssh(key)


def node_public_openssh(key: ec.EllipticCurvePrivateKey, comment: str = "stamen-node") -> bytes:
    """The ``ecdsa-sha2-nistp384 AAAA... comment`` line of ``key``'s public half."""
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + b" " + comment.encode() + b"\n"


def signing_key_files(passphrase: bytes | None = None) -> tuple[bytes, bytes]:
    """A fresh Ed25519 update-signing key: (PEM PKCS#8 private, PEM SPKI public)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem(key, passphrase), public


def load_signer(path: Path, passphrase: bytes | None = None) -> Signer:
    """A :class:`~stamen.protocols.signing.Signer` from a (possibly encrypted) Ed25519 PEM key."""
    key = load_private_pem(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return Signer(key)


def device_update_key(node_key: bytes) -> tuple[bytes, bytes]:
    """A fresh Ed25519 update-signing key for a device and its node key's endorsement of it:
    ``(PEM PKCS#8 private key, endorsement)`` (see :mod:`stamen.protocols.identity`)."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private_pem(key), endorse(load_node_key(node_key), raw)


def new_secret(nbytes: int = 32) -> bytes:
    """A random shared secret as hex text (the SuperExec auth secret is read as raw bytes)."""
    return secrets.token_hex(nbytes).encode()


def _write_atomic(path: Path, data: bytes, mode: int, force: bool, owner: Owner | None) -> None:
    """Write ``data`` to a temp file beside ``path`` (``mode`` from creation on), fsync, then move it
    into place: ``os.replace`` with ``force``, else ``os.link`` (which fails if ``path`` exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not force:
        raise KeyFileExists(f"{path} exists; pass --force to overwrite it")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask must not widen or narrow it
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileExists(f"{path} exists; pass --force to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_private(path: Path, data: bytes, *, force: bool = False, owner: Owner | None = None) -> None:
    """Write a private key or secret with mode 0600 (owned by ``owner`` = (uid, gid) when given).

    Raises
    ------
    KeyFileExists
        If ``path`` exists and ``force`` is false; the existing file is left untouched.
    """
    _write_atomic(path, data, PRIVATE_MODE, force, owner)


def write_public(path: Path, data: bytes, *, owner: Owner | None = None) -> None:
    """Write (or replace) a public file (certificate, public key, config) with mode 0644."""
    _write_atomic(path, data, PUBLIC_MODE, True, owner)
