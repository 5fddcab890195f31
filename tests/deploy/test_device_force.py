"""``stamen device init --force`` on an existing device: bad inputs change nothing, and the kept
trusted-entities are the file the device used, never one found relative to the caller's directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stamen.deploy.keys import signing_key_files
from stamen.device.config import load_device_config, render_device_config
from stamen.device.provision import DeviceInitOptions, device_init


def _ssh() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def provisioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, DeviceInitOptions]:
    """A device provisioned with trusted-entities (the store faked: not the point here)."""
    import stamen.edge
    from stamen.device import provision

    def fake_store(store: Path, *a: object, **k: object) -> None:
        store.mkdir()
        (store / "manifest.json").write_text("{}")

    monkeypatch.setattr(stamen.edge, "create_store", fake_store)
    monkeypatch.setattr(provision, "_model_id", lambda model: "m")
    (tmp_path / "m.onnx").write_bytes(b"not read")
    (tmp_path / "server.pub.pem").write_bytes(signing_key_files()[1])
    given = tmp_path / "reviewers.yaml"
    given.write_text(f"fpk_reviewer: '{_ssh()}'\n")
    opts = DeviceInitOptions(
        model=tmp_path / "m.onnx",
        trust=tmp_path / "server.pub.pem",
        superlink="127.0.0.1:9092",
        data_source="m:f",
        insecure=True,
        trusted_entities=given,
    )
    home = tmp_path / "dev"
    device_init(home, opts)
    return home, dataclasses.replace(opts, trusted_entities=None, force=True)


def _device_files(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"superlink": "-h:9092"}, "starts with '-'"),
        ({"superlink": "fl.example.org"}, "superlink must be HOST:PORT"),
        ({"runtime_port": 0}, "runtime-port must be 1..65535"),
        ({"node_config": {"edge-store": "/elsewhere"}}, "may not set 'edge-store'"),
    ],
)
def test_a_bad_value_re_provisions_nothing(
    provisioned: tuple[Path, DeviceInitOptions], change: dict[str, object], message: str
) -> None:
    """These were refused only once the node key, the store and trust/ had been replaced: the
    device was left with its old device.toml, a node key the SuperLink never registered and an
    empty store."""
    home, force = provisioned
    before = _device_files(home)
    with pytest.raises(ValueError, match=message):
        device_init(home, dataclasses.replace(force, **change))  # type: ignore[arg-type]
    assert _device_files(home) == before


@pytest.mark.parametrize("hand_set", ["trust/trusted-entities.yaml", "~/trust/trusted-entities.yaml"])
def test_a_relative_kept_path_is_refused(
    provisioned: tuple[Path, DeviceInitOptions],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hand_set: str,
) -> None:
    """A relative (or ``~``) trusted-entities set by hand is the daemon's: relative to its working
    directory (the systemd unit's) or its user's home, unknown here. It was read relative to the
    caller's, copying whatever file of that name was there as the device's trusted keys."""
    home, force = provisioned
    cfg = load_device_config(home / "device.toml")
    relative = dataclasses.replace(cfg, trusted_entities=hand_set)
    (home / "device.toml").write_text(render_device_config(relative))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "trust").mkdir(parents=True)
    (elsewhere / "trust" / "trusted-entities.yaml").write_text(f"fpk_other: '{_ssh()}'\n")
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(elsewhere))
    before = _device_files(home)
    with pytest.raises(ValueError, match="is not an absolute path") as exc:
        device_init(home, force)
    assert "\n" not in str(exc.value) and "--no-trusted-entities" in str(exc.value)
    assert _device_files(home) == before


@pytest.mark.parametrize("entities", ["keep", "off", "new"])
def test_a_bad_node_key_re_provisions_nothing(
    provisioned: tuple[Path, DeviceInitOptions], tmp_path: Path, entities: str
) -> None:
    """A --node-key that is not a node key was refused only after trust/ was written: with
    --no-trusted-entities the device lost trust/trusted-entities.yaml while its device.toml still
    named it (the daemon then refuses to start); with a new file it trusted other keys."""
    home, force = provisioned
    (tmp_path / "bad.key").write_bytes(b"not a node key")
    other = tmp_path / "other.yaml"
    other.write_text(f"fpk_other: '{_ssh()}'\n")
    change = {"off": {"no_trusted_entities": True}, "new": {"trusted_entities": other}}.get(entities, {})
    before = _device_files(home)
    with pytest.raises(ValueError, match="not a node private key"):
        device_init(home, dataclasses.replace(force, node_key=tmp_path / "bad.key", **change))  # type: ignore[arg-type]
    assert _device_files(home) == before


def test_a_model_the_store_refuses_re_provisions_nothing(
    provisioned: tuple[Path, DeviceInitOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old store was removed, and the node key replaced, before the new store was made: a model
    it refused left the device with no store and a node key the SuperLink never registered."""
    import stamen.edge

    def refuse(store: Path, *a: object, **k: object) -> None:
        raise ValueError("weights do not match the arch spec")

    monkeypatch.setattr(stamen.edge, "create_store", refuse)
    home, force = provisioned
    before = _device_files(home)
    with pytest.raises(ValueError, match="do not match"):
        device_init(home, force)
    assert _device_files(home) == before and not (home / "store.new").exists()


def test_a_file_that_is_not_onnx_is_one_line(tmp_path: Path) -> None:
    """``onnx.load`` raised protobuf's ``DecodeError`` (a traceback, not a one-line error)."""
    from stamen.device.provision import _model_id

    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"garbage, not a model")
    with pytest.raises(ValueError, match="is not an ONNX model") as exc:
        _model_id(bad)
    assert "\n" not in str(exc.value)


def test_a_failure_after_the_new_store_leaves_the_old_one_and_no_new_one(
    provisioned: tuple[Path, DeviceInitOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails after the new store was made (a full disk while writing the keys): the new
    store is removed and the device's store is the old one."""
    from stamen.device import provision

    home, opts = provisioned
    (home / "store" / "marker").write_text("old")

    def full_disk(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(provision, "_keys", full_disk)
    with pytest.raises(OSError, match="No space left"):
        device_init(home, opts)
    assert (home / "store" / "marker").read_text() == "old"
    assert not (home / "store.new").exists() and not (home / "store.old").exists()


def test_a_forced_init_replaces_the_store(provisioned: tuple[Path, DeviceInitOptions]) -> None:
    home, opts = provisioned
    (home / "store" / "marker").write_text("old")
    device_init(home, opts)
    assert (home / "store" / "manifest.json").exists() and not (home / "store" / "marker").exists()
    assert not (home / "store.new").exists() and not (home / "store.old").exists()
