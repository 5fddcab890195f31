"""``trusted-entities``: the device daemon passes it to ``flower-supernode`` and refuses, with one line,
a file the SuperNode would refuse or (empty) ignore; the file it accepts is one Flower 1.41 reads and
verifies a signed FAB with."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.supercore.fab import Fab
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign
from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities, _validate_public_keys_ed25519
from flwr.supernode.start_client_internal import _verify_fab

from stamen.deploy.keys import signing_key_files
from stamen.device import daemon
from stamen.device.config import DeviceConfig, load_device_config, render_device_config
from stamen.device.daemon import supernode_argv
from stamen.device.provision import DeviceInitOptions, device_init
from stamen.device.trusted import check_trusted_entities

CFG = DeviceConfig(
    superlink="fl.example.org:9092",
    node_key="/d/keys/node.key",
    signing_key="/d/keys/device-signing.pem",
    endorsement="/d/keys/device-signing.endorsement",
    store="/d/store",
    data_source="/d/data/train.npz",
    flwr_home="/d/flwr",
    root_certificates="/d/trust/ca.crt",
)


def _ssh(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii")


def _entities(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trusted-entities.yaml"
    path.write_text(text)
    return path


def test_the_option_reaches_the_supernode_and_the_config_round_trips(tmp_path: Path) -> None:
    assert "--trusted-entities" not in supernode_argv(CFG, "sn")
    cfg = dataclasses.replace(CFG, trusted_entities="/d/trust/trusted-entities.yaml")
    argv = supernode_argv(cfg, "sn")
    assert argv[argv.index("--trusted-entities") + 1] == "/d/trust/trusted-entities.yaml"
    (tmp_path / "device.toml").write_text(render_device_config(cfg))
    assert load_device_config(tmp_path / "device.toml") == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "is not a file"),
        ("{}\n", "at least one public-key id"),  # Flower would run every FAB unverified
        ("", "at least one public-key id"),
        ("- fpk_a\n", "at least one public-key id"),
        ("fpk_a: [1\n", "not valid YAML"),
        ("fpk_a: 3\n", "must be a str id -> str key"),
        ("fpk_a: 'ssh-ed25519 AAAAnope'\n", "'fpk_a' is not an OpenSSH public key"),
        ("ECDSA", "'fpk_a' is not an Ed25519 key"),
        ("RESERVED", "'valid_license' is reserved by Flower"),  # Flower would refuse every FAB
        ("DIRECTORY", "is not a file"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, text: str | None, message: str) -> None:
    if text == "ECDSA":
        text = f"fpk_a: '{_ssh(ec.generate_private_key(ec.SECP384R1()))}'\n"
    if text == "RESERVED":
        text = f"valid_license: '{_ssh(ed25519.Ed25519PrivateKey.generate())}'\n"
    path = tmp_path / "trusted-entities.yaml" if text is None else _entities(tmp_path, text)
    if text == "DIRECTORY":
        path.unlink()
        path.mkdir()
    with pytest.raises(ValueError, match=message) as exc:
        check_trusted_entities(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_check_device_refuses_a_bad_file_before_the_store(tmp_path: Path) -> None:
    keys = {n: tmp_path / n for n in ("node.key", "signing.pem", "endorsement", "ca.crt")}
    for name, path in keys.items():
        path.write_bytes(signing_key_files()[0] if name == "signing.pem" else b"x")
    cfg = dataclasses.replace(
        CFG,
        node_key=str(keys["node.key"]),
        signing_key=str(keys["signing.pem"]),
        endorsement=str(keys["endorsement"]),
        root_certificates=str(keys["ca.crt"]),
        store=str(tmp_path / "no-store"),
        trusted_entities=str(_entities(tmp_path, "{}\n")),
    )
    with pytest.raises(ValueError, match=r"trusted-entities .* at least one"):
        daemon.check_device(cfg)


def test_device_init_refuses_a_bad_file_before_writing(tmp_path: Path) -> None:
    model, trust = tmp_path / "m.onnx", tmp_path / "server.pub.pem"
    model.write_bytes(b"not parsed before the checks")
    trust.write_bytes(signing_key_files()[1])
    bad = _entities(tmp_path, "fpk_a: 'ssh-rsa AAAA'\n")
    opts = DeviceInitOptions(model, trust, "127.0.0.1:9092", "mod:fn", insecure=True, trusted_entities=bad)
    with pytest.raises(ValueError, match="trusted-entities"):
        device_init(tmp_path / "dev", opts)
    assert not (tmp_path / "dev").exists()


def test_unset_is_warned_at_start(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    status = {"version": 0, "hash": "ab" * 32, "model_id": "m"}
    monkeypatch.setattr(daemon, "check_device", lambda cfg, repair=False: status)
    monkeypatch.setattr(daemon, "supernode_executable", lambda: "sn")
    monkeypatch.setattr(daemon.Supervisor, "run", lambda self: 0)
    monkeypatch.setattr(daemon.signal, "signal", lambda *a: None)
    with caplog.at_level(logging.WARNING, logger="stamen.device"):
        assert daemon.run_daemon(CFG) == 0
    assert "trusted-entities is not set: the SuperNode runs any app (FAB)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stamen.device"):
        daemon.run_daemon(dataclasses.replace(CFG, trusted_entities="/d/t.yaml"))
    assert "trusted-entities" not in caplog.text


def _signed_fab(content: bytes, key_id: str, key: ed25519.Ed25519PrivateKey) -> Fab:
    """A FAB with a verification record as the SuperLink attaches one from Flower Hub."""
    signed_at = 1_767_000_000
    signature = key.sign(create_message_to_sign(hashlib.sha256(content).digest(), signed_at))
    record = {"signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(), "signed_at": signed_at}
    verifications = {key_id: json.dumps(record), "valid_license": "Valid"}
    return Fab(hashlib.sha256(content).hexdigest(), content, verifications)


def test_a_file_it_accepts_is_what_flower_verifies_a_signed_fab_with(tmp_path: Path) -> None:
    """Flower 1.41's own reader and check accept the file, and its FAB check passes a FAB signed by
    the trusted key and fails a changed one, one signed by another (or an unknown) key."""
    trusted, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    path = _entities(tmp_path, f"fpk_reviewer: '{_ssh(trusted)} reviewer@example.org'\n")
    entities = check_trusted_entities(path)
    assert _try_obtain_trusted_entities(path) == entities
    _validate_public_keys_ed25519(entities)  # exits on a key it refuses
    fab = _signed_fab(b"app", "fpk_reviewer", trusted)
    assert _verify_fab(fab, entities)
    changed = dataclasses.replace(fab, content=b"app + code from a compromised SuperLink")
    assert not _verify_fab(changed, entities)
    assert not _verify_fab(_signed_fab(b"app", "fpk_reviewer", other), entities)
    assert not _verify_fab(_signed_fab(b"app", "fpk_someone", trusted), entities)


def test_the_file_is_checked_again_before_every_supernode_start(tmp_path: Path) -> None:
    """The SuperNode re-reads the file at each restart: a file emptied meanwhile (verification off in
    Flower) must not be started with. The child empties it and exits; the next start is refused."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = _entities(tmp_path, f"fab-key: {_ssh(key)}\n")
    log = tmp_path / "sn.log"
    empty_it = f"import pathlib; pathlib.Path({str(path)!r}).write_text('{{}}'); print('up')"
    child = [daemon.sys.executable, "-c", empty_it]
    fast = dataclasses.replace(CFG.daemon, backoff_initial_s=0.01, backoff_max_s=0.02)
    sup = daemon.Supervisor(child, {}, fast, log, max_starts=3, precheck=lambda: check_trusted_entities(path))
    assert sup.run() == 1 and sup.starts == 3
    assert log.read_text().split() == ["up"]  # started once, then refused twice


def test_run_daemon_rechecks_the_configured_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status = {"version": 0, "hash": "ab" * 32, "model_id": "m"}
    monkeypatch.setattr(daemon, "check_device", lambda cfg, repair=False: status)
    monkeypatch.setattr(daemon, "supernode_executable", lambda: "sn")
    monkeypatch.setattr(daemon.signal, "signal", lambda *a: None)
    seen: list[object] = []
    monkeypatch.setattr(daemon.Supervisor, "run", lambda self: seen.append(self.precheck) or 0)
    daemon.run_daemon(CFG)
    path = _entities(tmp_path, "{}\n")
    daemon.run_daemon(dataclasses.replace(CFG, trusted_entities=str(path)))
    assert seen[0] is None and callable(seen[1])
    with pytest.raises(ValueError, match="trusted-entities"):
        seen[1]()  # type: ignore[operator]


def test_an_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _entities(tmp_path, "fpk_a: x\n")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # as root, chmod 000 would not stop the read
    with pytest.raises(ValueError, match="cannot be read \\(Permission denied\\)") as exc:
        check_trusted_entities(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_force_keeps_the_trusted_entities_unless_turned_off_explicitly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``device init --force`` without ``--trusted-entities`` once wrote ``trusted-entities = ""``
    (app verification off, the old file left on disk); it keeps them, and only
    ``--no-trusted-entities`` turns verification off (and removes the file)."""
    import stamen.edge
    from stamen.cli import main
    from stamen.device import provision

    monkeypatch.setattr(stamen.edge, "create_store", lambda store, *a, **k: store.mkdir())  # not the point
    monkeypatch.setattr(provision, "_model_id", lambda model: "m")
    (tmp_path / "m.onnx").write_bytes(b"not read")
    (tmp_path / "server.pub.pem").write_bytes(signing_key_files()[1])
    home, ssh = tmp_path / "dev", _ssh(ed25519.Ed25519PrivateKey.generate())
    given = _entities(tmp_path, f"fpk_reviewer: '{ssh}'\n")
    args = ["device", "init", str(home), "--model", str(tmp_path / "m.onnx"), "--insecure"]
    args += ["--trust", str(tmp_path / "server.pub.pem"), "--superlink", "127.0.0.1:9092", "--data", "m:f"]
    kept = home / "trust" / "trusted-entities.yaml"
    assert main([*args, "--trusted-entities", str(given)]) == 0
    assert main([*args, "--force"]) == 0
    assert load_device_config(home / "device.toml").trusted_entities == str(kept)
    assert kept.read_text() == given.read_text() and f"signed by a key in {kept}" in capsys.readouterr().out
    kept.write_text("{}\n")  # the kept file is broken: refused, naming the flags, nothing changed
    before = (home / "device.toml").read_text()
    assert main([*args, "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--trusted-entities YAML" in err and "--no-trusted-entities" in err
    assert (home / "device.toml").read_text() == before
    both = [*args, "--force", "--no-trusted-entities", "--trusted-entities", str(given)]
    assert main(both) == 2 and "exclude each other" in capsys.readouterr().err
    assert main([*args, "--force", "--no-trusted-entities"]) == 0
    assert load_device_config(home / "device.toml").trusted_entities == "" and not kept.exists()
    assert "runs any app" in capsys.readouterr().out
    cfg = dataclasses.replace(load_device_config(home / "device.toml"), trusted_entities=str(given))
    (home / "device.toml").write_text(render_device_config(cfg))  # set by hand, outside the folder
    assert main([*args, "--force"]) == 0  # kept: copied into the folder
    assert load_device_config(home / "device.toml").trusted_entities == str(kept)
    assert kept.read_text() == given.read_text()
