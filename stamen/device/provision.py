"""``stamen device init``: provision one device in one folder.

Layout (``DIR``, 0700)::

    DIR/device.toml                     the one config file (`stamen device run --config`)
    DIR/store/                          the edge model store (ONNX), version 0 = the federation's model
    DIR/trust/update-signing.pub.pem    the server's public key (given out of band): the store's anchor
    DIR/trust/ca.crt                    the CA that signed the SuperLink's certificate
    DIR/trust/trusted-entities.yaml     whose FAB signatures the SuperNode trusts (when given)
    DIR/keys/node.key (+ .pub)          the node identity key (ECDSA P-384, OpenSSH; register the .pub)
    DIR/keys/device-signing.pem         the device's update-signing key (Ed25519)
    DIR/keys/device-signing.endorsement the node key's endorsement of it
    DIR/flwr/                           the SuperNode's FLWR_HOME

Nothing is overwritten without ``force``; private keys are written 0600. A node key made elsewhere
(``stamen deploy init``'s ``nodes/node-N/node.key``) can be given instead of a new one.
Re-provisioning (``force``) keeps the device's trusted-entities (app signature verification) unless
new ones are given or ``no_trusted_entities`` turns it off explicitly: it is never dropped silently.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stamen.deploy.keys import device_update_key, new_node_key, write_private, write_public
from stamen.device.config import DeviceConfig, Scalar, load_device_config, render_device_config
from stamen.device.trusted import check_trusted_entities
from stamen.protocols import Verifier
from stamen.protocols.identity import load_node_key

__all__ = ["DeviceInitOptions", "device_init"]


@dataclass(frozen=True)
class DeviceInitOptions:
    """What ``stamen device init`` needs (paths are read, never moved)."""

    model: Path  # the federation's initial model (`stamen deploy model`), .onnx
    trust: Path  # the server's update-signing public key (PEM)
    superlink: str  # HOST:PORT of the SuperLink's Fleet API
    data_source: str  # the device's data: an .npz file or directory, or "module:function"
    ca: Path | None = None  # the CA certificate (required unless insecure)
    node_key: Path | None = None  # an existing node key; default: make one
    insecure: bool = False
    node_config: dict[str, Scalar] = field(default_factory=dict)
    runtime_port: int = 9094
    force: bool = False
    trusted_entities: Path | None = None  # YAML of FAB-signing keys (flower-supernode --trusted-entities)
    no_trusted_entities: bool = False  # with force: drop the device's trusted-entities (else kept)


def _check(opts: DeviceInitOptions) -> None:
    for name in ("model", "trust", "ca", "node_key", "trusted_entities"):
        path = getattr(opts, name)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"--{name.replace('_', '-')} {path} is not a file")
    if opts.model.suffix != ".onnx":
        raise ValueError(f"--model must be an .onnx file (from `stamen deploy model`), got {opts.model}")
    Verifier.from_files(opts.trust)  # an unusable anchor fails before anything is written
    if opts.node_key is not None:
        load_node_key(opts.node_key.read_bytes())  # so does a file that is not a node key
    if opts.trusted_entities is not None:
        check_trusted_entities(opts.trusted_entities)
        if opts.no_trusted_entities:
            raise ValueError("--trusted-entities and --no-trusted-entities exclude each other")
    if opts.ca is None and not opts.insecure:
        raise ValueError("--ca is required (the CA of the SuperLink's certificate) unless --insecure")


_KEEP_OR_DROP = "pass --trusted-entities YAML to replace it or --no-trusted-entities to run any app"


def _entities(home: Path, opts: DeviceInitOptions) -> bytes | None:
    """The trusted-entities the device will have (None: none): the given file's, else, when
    re-provisioning without ``no_trusted_entities``, those the existing device.toml names (checked)."""
    if opts.trusted_entities is not None:
        return opts.trusted_entities.read_bytes()
    if opts.no_trusted_entities or not (home / "device.toml").exists():
        return None
    try:
        previous = load_device_config(home / "device.toml").trusted_entities
    except ValueError as exc:
        raise ValueError(f"cannot keep the device's trusted-entities ({exc}); {_KEEP_OR_DROP}") from None
    if not previous:
        return None
    if not Path(previous).is_absolute():  # the daemon's working directory's (or home's), not ours
        raise ValueError(
            f"cannot keep the device's trusted-entities: {previous!r} in device.toml is not an absolute "
            f"path (the daemon reads it relative to its own directory or home); {_KEEP_OR_DROP}"
        )
    try:
        check_trusted_entities(previous)
        return Path(previous).expanduser().read_bytes()
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot keep the device's trusted-entities ({exc}); {_KEEP_OR_DROP}") from None


def _write_trust(home: Path, opts: DeviceInitOptions, entities_text: bytes | None) -> Path | None:
    """Write ``trust/`` (the anchor, the CA, the trusted-entities); return the last's path (None: off)."""
    write_public(home / "trust" / "update-signing.pub.pem", opts.trust.read_bytes())
    if opts.ca is not None:
        write_public(home / "trust" / "ca.crt", opts.ca.read_bytes())
    entities = home / "trust" / "trusted-entities.yaml"
    if entities_text is not None:
        write_public(entities, entities_text)
        return entities
    if entities.exists() and opts.no_trusted_entities:
        entities.unlink()  # turned off: no stale file that reads as if it were used
    return None


def _model_id(model: Path) -> str | None:
    """The model id ``stamen deploy model`` recorded in the file (the server's deltas name it)."""
    import onnx  # only provisioning parses ONNX; the daemon never does

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError on a file that is not ONNX
        raise ValueError(f"--model {model} is not an ONNX model ({type(exc).__name__})") from None
    return next((p.value for p in proto.metadata_props if p.key == "stamen.model_id"), None)


def _keys(home: Path, opts: DeviceInitOptions) -> tuple[Path, Path, Path]:
    keys = home / "keys"
    node_key = keys / "node.key"
    if opts.node_key is not None:
        data = opts.node_key.read_bytes()
        write_private(node_key, data, force=opts.force)  # a node key: checked by _check
        pub = opts.node_key.with_name(opts.node_key.name + ".pub")
        if pub.is_file():
            write_public(keys / "node.key.pub", pub.read_bytes())
    else:
        private, public = new_node_key()
        write_private(node_key, private, force=opts.force)
        write_public(keys / "node.key.pub", public)
    signing, endorsement = device_update_key(node_key.read_bytes())
    write_private(keys / "device-signing.pem", signing, force=opts.force)
    write_public(keys / "device-signing.endorsement", endorsement)
    return node_key, keys / "device-signing.pem", keys / "device-signing.endorsement"


def device_init(home: Path, opts: DeviceInitOptions) -> DeviceConfig:
    """Provision a device under ``home`` (see the module docs); return its config (also written to
    ``home/device.toml``). ``ValueError`` for bad inputs or an existing device without ``force``."""
    from stamen.edge import create_store

    _check(opts)
    home = home.resolve()
    if (home / "device.toml").exists() and not opts.force:
        raise ValueError(f"{home} already holds a device (device.toml); pass --force to re-provision")
    entities_text = _entities(home, opts)  # before anything is written
    cfg = _config(home, opts, entities_text is not None)  # its values checked before anything is written
    model_id = _model_id(opts.model)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    store, fresh = home / "store", home / "store.new"
    for left in (fresh, home / "store.old"):  # left by an init that died
        if left.exists():
            shutil.rmtree(left)
    # beside the old store: a model create_store refuses replaces nothing (it removes what it made)
    create_store(fresh, opts.model, opts.trust, model_id=model_id)
    try:
        _write_trust(home, opts, entities_text)
        _keys(home, opts)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    _swap(store, fresh)
    (home / "flwr").mkdir(exist_ok=True)
    write_public(home / "device.toml", render_device_config(cfg).encode())
    return cfg


def _swap(store: Path, fresh: Path) -> None:
    """Put the ``fresh`` store in place of ``store`` (if any, only reached with force: the device.toml
    check) by two renames; the old one is removed last (an init that dies between the renames leaves
    it as ``store.old``, next to ``store.new``)."""
    old = store.with_name("store.old")
    if store.exists():
        store.rename(old)
    fresh.rename(store)
    if old.exists():
        shutil.rmtree(old)


def _config(home: Path, opts: DeviceInitOptions, entities: bool) -> DeviceConfig:
    """The device.toml of a device provisioned in ``home`` (the layout of the module docs);
    ``ValueError`` for a bad value (superlink, runtime port, node config)."""
    keys, trust = home / "keys", home / "trust"
    return DeviceConfig(
        superlink=opts.superlink,
        node_key=str(keys / "node.key"),
        signing_key=str(keys / "device-signing.pem"),
        endorsement=str(keys / "device-signing.endorsement"),
        store=str(home / "store"),
        data_source=opts.data_source,
        flwr_home=str(home / "flwr"),
        root_certificates=str(trust / "ca.crt") if opts.ca is not None else "",
        runtime_port=opts.runtime_port,
        insecure=opts.insecure,
        trusted_entities=str(trust / "trusted-entities.yaml") if entities else "",
        node_config=dict(opts.node_config),
    )
