"""``deploy init``: the layout, keep-don't-overwrite, renewal, passphrases, owners and the CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import tomllib
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stamen.deploy.cli import main
from stamen.deploy.init import InitOptions, deploy_init
from stamen.deploy.keys import load_signer
from stamen.protocols import SignatureError, Signer
from stamen.protocols.identity import verify_endorsement

PRIVATE = [
    "ca/ca.key",
    "superlink/server.key",
    "superlink/superexec.secret",
    "server/superexec.secret",
    "server/update-signing.pem",
    "nodes/node-0/node.key",
    "nodes/node-1/node.key",
    "nodes/node-0/device-signing.pem",
    "nodes/node-1/device-signing.pem",
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_modes_and_manifest(tmp_path: Path) -> None:
    report = deploy_init(tmp_path / "k")
    out = report.out_dir
    for rel in PRIVATE:
        assert stat.S_IMODE((out / rel).stat().st_mode) == 0o600, rel
    ca = (out / "ca" / "ca.crt").read_bytes()
    for role in ("superlink", "server", "operator", "nodes/node-0", "nodes/node-1"):
        assert (out / role / "ca.crt").read_bytes() == ca
    assert (out / "superlink/superexec.secret").read_bytes() == (out / "server/superexec.secret").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["server_cert_san"] == ["localhost", "superlink", "127.0.0.1"]
    assert manifest["update_signing_key_id"] == load_signer(out / "server/update-signing.pem").key_id
    assert sorted(manifest["nodes"]) == ["node-0", "node-1"]
    config = tomllib.loads((out / "operator/config.toml").read_text())
    assert config["superlink"]["stamen"] == {
        "address": "127.0.0.1:9093",
        "root-certificates": str(out / "operator" / "ca.crt"),
    }
    assert [c[3] for c in report.register_commands] == [
        str(out / "nodes/node-0/node.key.pub"),
        str(out / "nodes/node-1/node.key.pub"),
    ]


def test_second_run_keeps_keys_and_adds_only_new_nodes(tmp_path: Path) -> None:
    first = deploy_init(tmp_path)
    before = _snapshot(tmp_path)
    second = deploy_init(tmp_path, InitOptions(nodes=3))
    after = _snapshot(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in second.created] == [
        "nodes/node-2/node.key",
        "nodes/node-2/node.key.pub",
        "nodes/node-2/device-signing.pem",
        "nodes/node-2/device-signing.endorsement",
    ]
    for rel in PRIVATE:
        assert after[rel] == before[rel], rel
    assert len(first.created) == 16


def test_device_update_key_is_endorsed_by_its_node(tmp_path: Path) -> None:
    deploy_init(tmp_path, InitOptions(nodes=2))
    node0, node1 = tmp_path / "nodes/node-0", tmp_path / "nodes/node-1"
    signer = Signer.from_file(node0 / "device-signing.pem")
    assert (node0 / "device-signing.pem").stat().st_mode & 0o777 == 0o600
    endorsement = (node0 / "device-signing.endorsement").read_bytes()
    verify_endorsement(_pem(node0), signer.public_key_bytes(), endorsement)
    with pytest.raises(SignatureError):
        verify_endorsement(_pem(node1), signer.public_key_bytes(), endorsement)


def _pem(folder: Path) -> bytes:
    key = serialization.load_ssh_public_key((folder / "node.key.pub").read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_force_replaces_and_renew_reissues_only_the_server_cert(tmp_path: Path) -> None:
    deploy_init(tmp_path)
    before = _snapshot(tmp_path)
    deploy_init(tmp_path, InitOptions(renew_server_cert=True, dns_names=("fl.example.org",)))
    renewed = _snapshot(tmp_path)
    assert renewed["ca/ca.key"] == before["ca/ca.key"]
    assert renewed["superlink/server.key"] != before["superlink/server.key"]
    cert = x509.load_pem_x509_certificate(renewed["superlink/server.pem"])
    ca = x509.load_pem_x509_certificate(renewed["ca/ca.crt"])
    cert.verify_directly_issued_by(ca)
    assert json.loads(renewed["manifest.json"])["server_cert_san"] == ["fl.example.org", "127.0.0.1"]
    deploy_init(tmp_path, InitOptions(force=True))
    forced = _snapshot(tmp_path)
    assert all(forced[rel] != renewed[rel] for rel in PRIVATE)


def test_passphrase_protects_the_ca_key(tmp_path: Path) -> None:
    deploy_init(tmp_path, InitOptions(passphrase=b"a long passphrase"))
    assert b"ENCRYPTED" in (tmp_path / "ca/ca.key").read_bytes()
    assert b"ENCRYPTED" not in (tmp_path / "superlink/server.key").read_bytes()  # Flower reads it plain
    with pytest.raises(ValueError, match=r"ca\.key: the key is encrypted"):
        deploy_init(tmp_path, InitOptions(renew_server_cert=True))
    deploy_init(tmp_path, InitOptions(renew_server_cert=True, passphrase=b"a long passphrase"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_owner_applies_to_role_private_keys_not_the_ca(tmp_path: Path) -> None:
    deploy_init(tmp_path, InitOptions(owner=(49999, 49999)))
    assert (tmp_path / "superlink/server.key").stat().st_uid == 49999
    assert (tmp_path / "nodes/node-0/node.key").stat().st_uid == 49999
    assert (tmp_path / "ca/ca.key").stat().st_uid == os.geteuid()


def test_cli_init_register_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    assert main(["init", str(out), "--nodes", "1", "--dns", "fl.example.org", "--ip", "10.1.2.3"]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["register", str(out)]) == 0
    script = capsys.readouterr().out
    assert f"flwr supernode register {out}/nodes/node-0/node.key.pub stamen --name node-0" in script
    assert main(["init", str(out), "--owner", "app"]) == 2
    assert "--owner must be UID" in capsys.readouterr().err
    assert main(["init", str(out), "--ip", "not-an-ip", "--renew-server-cert"]) == 2
    assert "not an IP address: 'not-an-ip'" in capsys.readouterr().err
    assert main(["register", str(tmp_path / "nowhere")]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:  # an argparse mistake: one line, as the stamen command's
        main(["init", str(out), "--no-such-flag"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert "unrecognized arguments: --no-such-flag (see python -m stamen.deploy" in err


def test_register_run_reports_an_unreachable_superlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deploy_init(tmp_path, InitOptions(nodes=1, address="127.0.0.1:1"))  # nothing listens on port 1
    assert main(["register", str(tmp_path), "--run", "--timeout", "120"]) == 2
    err = capsys.readouterr().err
    assert "flwr supernode register" in err and "exited 1" in err and "unavailable" in err
