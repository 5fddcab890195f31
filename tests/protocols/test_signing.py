"""Ed25519 Signer / Verifier: RFC 8032 vector, key ids, key files, rejection paths."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stamen.protocols import SignatureError, Signer, Verifier
from stamen.protocols.signing import key_id_for

# RFC 8032 §7.1, TEST 1 (empty message).
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_vector_and_key_id() -> None:
    signer = Signer(Ed25519PrivateKey.from_private_bytes(RFC_SECRET))
    assert signer.public_key_bytes() == RFC_PUBLIC
    assert signer.sign(b"") == RFC_SIGNATURE
    assert signer.key_id == hashlib.sha256(RFC_PUBLIC).hexdigest()[:8] == key_id_for(RFC_PUBLIC)
    Verifier([RFC_PUBLIC]).verify(signer.key_id, b"", RFC_SIGNATURE)


def test_key_id_pinned() -> None:
    assert key_id_for(bytes(32)) == "66687aad"


def test_rejections(signer: Signer, other_signer: Signer) -> None:
    verifier = Verifier([signer.public_key_bytes()])
    sig = signer.sign(b"data")
    verifier.verify(signer.key_id, b"data", sig)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier.verify(signer.key_id, b"datb", sig)
    with pytest.raises(SignatureError, match="unknown"):
        verifier.verify(other_signer.key_id, b"data", other_signer.sign(b"data"))
    with pytest.raises(SignatureError, match="64"):
        verifier.verify(signer.key_id, b"data", sig[:-1])
    assert verifier.key_ids == {signer.key_id}


def test_save_and_load_keys(tmp_path: Path, signer: Signer) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    private.write_text("old")
    private.chmod(0o644)
    signer.save(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    loaded = Signer.from_file(private)
    assert loaded.key_id == signer.key_id
    verifier = Verifier.from_files(public)
    verifier.verify(signer.key_id, b"m", loaded.sign(b"m"))


def test_bad_key_material(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SignatureError):
        Signer.from_file(junk)
    with pytest.raises(SignatureError):
        Verifier.from_files(junk)
    with pytest.raises(SignatureError):
        Verifier([b"short"])
    with pytest.raises(SignatureError):
        Signer("key")


def test_a_trust_file_with_two_keys_trusts_both(tmp_path: Path) -> None:
    """Rotating the update-signing key: the devices' trust file holds the old and the new public
    key side by side (docs/deployment.md, section 8); both are trusted (only the first was)."""
    old, new = Signer.generate(), Signer.generate()
    for name, signer in (("old", old), ("new", new)):
        signer.save(tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem")
    both = tmp_path / "trusted.pem"
    both.write_bytes((tmp_path / "old.pub.pem").read_bytes() + (tmp_path / "new.pub.pem").read_bytes())
    assert Verifier.from_files(both).key_ids == {old.key_id, new.key_id}
