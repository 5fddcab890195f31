"""The device's trusted-entities file: whose signatures make an app (FAB) runnable on this device.

A SuperNode runs the code of whatever app (FAB) its SuperLink sends it, with the device's keys in
reach. Given ``--trusted-entities FILE`` (Flower 1.41), it runs only a FAB that carries a signature
of one of the file's keys over the FAB's SHA-256 and answers any other with an error. The file is
YAML mapping Flower Hub public-key ids to OpenSSH Ed25519 public keys::

    fpk_6f1c...: "ssh-ed25519 AAAAC3Nza... reviewer@example.org"

Flower reads it only when the SuperNode starts, and exits on a bad file (which a supervisor would
restart forever); worse, an *empty* mapping silently turns verification off. :func:`check_trusted_entities`
refuses all of these first, with one line. See docs/deployment.md ("Which code a device runs").
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_trusted_entities"]

RESERVED_ID = "valid_license"  # the FAB verifications' licence entry (flwr.supernode._verify_fab)


def check_trusted_entities(path: str | Path) -> dict[str, str]:
    """The ``key id -> public key`` entries of ``path``, checked as ``flower-supernode`` checks them
    and non-empty; ``ValueError`` (one line, naming the file) for a missing, unreadable or empty
    file, YAML that is not a mapping of strings, or a key that is not an OpenSSH Ed25519 key."""
    import yaml  # a dependency of flwr (the device extra)

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"trusted-entities {path} is not a file")
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeError) as exc:
        raise ValueError(f"trusted-entities {path}: not valid YAML ({type(exc).__name__})") from None
    except OSError as exc:
        raise ValueError(f"trusted-entities {path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(
            f"trusted-entities {path}: must map at least one public-key id to an 'ssh-ed25519 ...' key "
            "(an empty file would turn FAB verification off)"
        )
    for key_id, key in doc.items():
        if not isinstance(key_id, str) or not key_id or not isinstance(key, str):
            raise ValueError(f"trusted-entities {path}: entry {key_id!r} must be a str id -> str key")
        if key_id == RESERVED_ID:  # a FAB's licence flag, never a signer: Flower skips it
            raise ValueError(f"trusted-entities {path}: {RESERVED_ID!r} is reserved by Flower, not a key id")
        _check_ed25519(path, key_id, key)
    return dict(doc)


def _check_ed25519(path: str | Path, key_id: str, key: str) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        public = load_ssh_public_key(key.encode("utf-8"))
    except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"trusted-entities {path}: {key_id!r} is not an OpenSSH public key ({exc})"
        ) from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise ValueError(
            f"trusted-entities {path}: {key_id!r} is not an Ed25519 key (Flower needs ssh-ed25519)"
        )
