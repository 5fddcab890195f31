"""``stamen device init | run | status | install-unit`` (see :mod:`stamen.device`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_device_commands", "dispatch"]

DEFAULT_CONFIG = "/etc/stamen/device.toml"


def add_device_commands(subparsers: Any) -> None:
    """Add the ``device`` group to a parser's subparsers."""
    from stamen.deploy.cli import add_install_unit_command

    device = subparsers.add_parser("device", help="provision and run a device daemon")
    actions = device.add_subparsers(dest="device_action", required=True)
    init = actions.add_parser("init", help="provision a device: store, keys, trust anchor, config")
    init.add_argument("dir", type=Path, metavar="DIR", help="the device's folder (created, 0700)")
    init.add_argument(
        "--model", type=Path, required=True, help="initial model (.onnx, `stamen deploy model`)"
    )
    init.add_argument("--trust", type=Path, required=True, help="the server's update-signing public key")
    init.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's Fleet API")
    init.add_argument("--data", required=True, help="the device's data: .npz file/dir or module:function")
    init.add_argument("--ca", type=Path, default=None, help="CA certificate of the SuperLink (TLS)")
    init.add_argument("--node-key", type=Path, default=None, help="existing node key (default: make one)")
    init.add_argument("--node-config", default="", help='extra node config, e.g. "partition-id=0"')
    init.add_argument("--runtime-port", type=int, default=9094, help="the SuperNode's local API port")
    init.add_argument("--insecure", action="store_true", help="plaintext (trials only; warned)")
    init.add_argument(
        "--trusted-entities",
        type=Path,
        default=None,
        metavar="YAML",
        help="run only apps (FABs) signed by these keys (flower-supernode --trusted-entities)",
    )
    init.add_argument(
        "--no-trusted-entities",
        action="store_true",
        help="with --force: turn off the device's app verification (otherwise its trusted-entities are kept)",
    )
    init.add_argument(
        "--force", action="store_true", help="re-provision an existing device (keeps its trusted-entities)"
    )
    run = actions.add_parser("run", help="run the device daemon (SuperNode + stamen ClientApp)")
    run.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help="device.toml")
    run.add_argument("--log", type=Path, default=None, help="append the SuperNode's output here")
    run.add_argument("--max-starts", type=int, default=0, help="give up after N starts (0: never)")
    status = actions.add_parser("status", help="the device's store version and keys (JSON)")
    status.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help="device.toml")
    add_install_unit_command(actions)


def _node_config(text: str) -> dict[str, Any]:
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text])) if text.strip() else {}
    except Exception as exc:  # click.ClickException, ValueError
        raise ValueError(f"--node-config {text!r}: {exc}") from None


def _init(args: argparse.Namespace) -> int:
    from stamen.device.provision import DeviceInitOptions, device_init

    opts = DeviceInitOptions(
        model=args.model,
        trust=args.trust,
        superlink=args.superlink,
        data_source=args.data,
        ca=args.ca,
        node_key=args.node_key,
        insecure=args.insecure,
        node_config=_node_config(args.node_config),
        runtime_port=args.runtime_port,
        force=args.force,
        trusted_entities=args.trusted_entities,
        no_trusted_entities=args.no_trusted_entities,
    )
    cfg = device_init(args.dir, opts)
    print(f"device provisioned in {args.dir.resolve()} (config {args.dir.resolve() / 'device.toml'})")
    print(
        f"register its node key with the SuperLink: flwr supernode register {cfg.node_key}.pub <connection>"
    )
    verified = f"only apps signed by a key in {cfg.trusted_entities}" if cfg.trusted_entities else "any app"
    print(f"its SuperNode runs {verified} (trusted-entities)")
    print(f"then run: stamen device run --config {args.dir.resolve() / 'device.toml'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from stamen.device.config import load_device_config
    from stamen.device.daemon import run_daemon
    from stamen.logs import configure_logging

    configure_logging("device")
    logging.getLogger("stamen").info("stamen device daemon starting (config %s)", args.config)
    if args.max_starts < 0:
        raise ValueError(f"--max-starts must be >= 0, got {args.max_starts}")
    return run_daemon(load_device_config(args.config), args.log, args.max_starts)


def _status(args: argparse.Namespace) -> int:
    from stamen.device.config import load_device_config
    from stamen.device.daemon import check_device
    from stamen.protocols import Signer

    cfg = load_device_config(args.config)
    out = {**check_device(cfg), "update_key_id": Signer.from_file(cfg.signing_key).key_id}
    out |= {"superlink": cfg.superlink, "insecure": cfg.insecure, "trusted_entities": cfg.trusted_entities}
    print(json.dumps(out, indent=2))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed ``device`` command; returns the exit code."""
    action = args.device_action
    try:
        if action == "init":
            return _init(args)
        if action == "run":
            return _run(args)
        if action == "status":
            return _status(args)
    except FileNotFoundError:
        raise
    except OSError as exc:  # e.g. EIO reading the store: one line (nothing was changed)
        where = f": {exc.filename}" if exc.filename is not None else ""
        raise ValueError(f"{exc.strerror or exc}{where}") from None
    from stamen.deploy.cli import dispatch as deploy_dispatch

    return deploy_dispatch(args)  # install-unit
