"""Key files: modes, no silent overwrite, and formats that Flower and stamen's signing really load."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.supernode.register import try_load_public_key

from stamen.deploy.keys import (
    KeyFileExists,
    load_signer,
    new_node_key,
    signing_key_files,
    write_private,
    write_public,
)
from stamen.protocols.errors import SignatureError
from stamen.protocols.signing import Signer, Verifier


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "k", b"secret")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600
    assert (tmp_path / "k").read_bytes() == b"secret"
    write_public(tmp_path / "p", b"public")
    assert _mode(tmp_path / "p") == 0o644


def test_existing_key_is_never_overwritten_without_force(tmp_path: Path) -> None:
    key = tmp_path / "k"
    write_private(key, b"first")
    with pytest.raises(KeyFileExists, match="--force"):
        write_private(key, b"second")
    assert key.read_bytes() == b"first"
    write_private(key, b"third", force=True)
    assert key.read_bytes() == b"third" and _mode(key) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temp file left behind


def test_node_key_is_what_flower_loads(tmp_path: Path) -> None:
    private, public = new_node_key()
    key = load_ssh_private_key(private, None)  # exactly how flower-supernode loads it
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    assert public.startswith(b"ecdsa-sha2-nistp384 ")
    pub = load_ssh_public_key(public)
    assert pub.public_numbers() == key.public_key().public_numbers()
    (tmp_path / "node.key.pub").write_bytes(public)
    assert try_load_public_key(tmp_path / "node.key.pub")  # what `flwr supernode register` reads


def test_signing_key_round_trips_through_signer_and_verifier(tmp_path: Path) -> None:
    private, public = signing_key_files()
    (tmp_path / "k.pem").write_bytes(private)
    (tmp_path / "k.pub.pem").write_bytes(public)
    signer = Signer.from_file(tmp_path / "k.pem")
    verifier = Verifier.from_files(tmp_path / "k.pub.pem")
    assert verifier.key_ids == {signer.key_id}
    verifier.verify(signer.key_id, b"header", signer.sign(b"header"))
    with pytest.raises(SignatureError):
        verifier.verify(signer.key_id, b"header", signer.sign(b"other"))


def test_encrypted_signing_key_needs_its_passphrase(tmp_path: Path) -> None:
    private, _ = signing_key_files(passphrase=b"correct horse")
    path = tmp_path / "k.pem"
    path.write_bytes(private)
    assert b"ENCRYPTED" in private
    with pytest.raises(SignatureError):
        Signer.from_file(path)  # the plain loader cannot read it
    assert len(load_signer(path, b"correct horse").key_id) == 8
    with pytest.raises(ValueError, match="passphrase"):
        load_signer(path)
    with pytest.raises(ValueError, match="cannot load"):
        load_signer(path, b"wrong horse")


def test_short_passphrase_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8 bytes, got 3"):
        signing_key_files(passphrase=b"abc")
