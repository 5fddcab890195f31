"""Command line of :mod:`stamen.deploy` (also ``python -m stamen.deploy``)::

    stamen deploy init OUT [--nodes N] [--dns NAME ...] [--ip ADDR ...] [--address HOST:PORT]
                           [--passphrase-file FILE] [--owner UID[:GID]] [--force] [--renew-server-cert]
    stamen deploy register OUT [--run] [--timeout S]
    stamen deploy model --scenario NAME [--set KEY=VALUE ...] -o model.onnx
    stamen device install-unit [--config PATH] [--exec PATH] [--user NAME] [-o FILE]
    python -m stamen.deploy init|register|install-unit ...   (the same, without stamen.cli)

``stamen.cli`` wires them in with :func:`add_deploy_commands` (the ``deploy`` group) and
:func:`add_install_unit_command` (inside the ``device`` group), then calls :func:`dispatch`. Errors
are ``ValueError`` with a one-line reason (exit 2 in ``stamen.cli.main`` and in :func:`main`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_deploy_commands", "add_install_unit_command", "dispatch", "main"]


def add_deploy_commands(subparsers: Any) -> None:
    """Add the ``deploy`` group (``init``, ``register``) to a parser's subparsers."""
    deploy = subparsers.add_parser("deploy", help="keys, certificates and SuperNode registration")
    _add_actions(deploy.add_subparsers(dest="deploy_action", required=True))


def _add_actions(actions: Any) -> None:
    init = actions.add_parser("init", help="make the CA, server certificate, node and signing keys")
    init.add_argument("out", type=Path, metavar="OUT", help="output folder (created)")
    init.add_argument("--nodes", type=int, default=2, help="node identity keys to make (default 2)")
    init.add_argument("--dns", action="append", default=None, metavar="NAME", help="server cert DNS SAN")
    init.add_argument("--ip", action="append", default=None, metavar="ADDR", help="server cert IP SAN")
    init.add_argument("--address", default="127.0.0.1:9093", help="SuperLink HOST:PORT for the operator")
    init.add_argument("--passphrase-file", type=Path, default=None, help="encrypt ca.key and signing key")
    init.add_argument("--owner", default=None, metavar="UID[:GID]", help="owner of role private keys")
    init.add_argument("--force", action="store_true", help="replace existing private keys")
    init.add_argument("--renew-server-cert", action="store_true", help="reissue the server certificate")
    model = actions.add_parser("model", help="export the run's initial model (ONNX) for device stores")
    model.add_argument("--scenario", default="smoke", help="the scenario the ServerApp will run")
    model.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    model.add_argument("-o", "--out", type=Path, required=True, help="output .onnx (+ .onnx.data)")
    reg = actions.add_parser("register", help="register the node keys with the SuperLink")
    reg.add_argument("out", type=Path, metavar="OUT", help="folder made by `deploy init`")
    reg.add_argument("--run", action="store_true", help="run the commands (default: print them)")
    reg.add_argument("--timeout", type=float, default=60.0, help="seconds per command (default 60)")


def add_install_unit_command(device_actions: Any) -> None:
    """Add ``install-unit`` to the ``device`` group's subparsers."""
    unit = device_actions.add_parser("install-unit", help="render the systemd unit of the device daemon")
    unit.add_argument("--config", default="/etc/stamen/device.toml", help="device config path")
    unit.add_argument("--exec", dest="exec_path", default="/opt/stamen/venv/bin/stamen")
    unit.add_argument("--user", default="stamen", help="dedicated system user (default stamen)")
    unit.add_argument("-o", "--out", type=Path, default=None, help="write here (default: stdout)")


def _owner(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise ValueError(f"--owner must be UID or UID:GID (numbers), got {text!r}")
    return int(uid), int(gid or uid)


def _init(args: argparse.Namespace) -> int:
    from .init import DEFAULT_DNS, DEFAULT_IPS, InitOptions, deploy_init

    passphrase = None
    if args.passphrase_file is not None:
        passphrase = args.passphrase_file.read_bytes().rstrip(b"\r\n")
    opts = InitOptions(
        nodes=args.nodes,
        dns_names=tuple(args.dns or DEFAULT_DNS),
        ips=tuple(args.ip or DEFAULT_IPS),
        address=args.address,
        passphrase=passphrase,
        force=args.force,
        renew_server_cert=args.renew_server_cert,
        owner=_owner(args.owner),
    )
    report = deploy_init(args.out, opts)
    for path in report.created:
        print(f"created {path}")
    for path in report.kept:
        print(f"kept    {path}")
    print(f"next: register the nodes: {report.out_dir / 'operator' / 'register.sh'}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from .register import node_register_commands, render_register_script, run_register

    operator = args.out / "operator"
    if not (operator / "config.toml").is_file():
        raise FileNotFoundError(f"{operator / 'config.toml'} not found: run `deploy init {args.out}` first")
    commands = node_register_commands(args.out)
    if not args.run:
        print(render_register_script(operator, commands), end="")
        return 0
    try:
        done = run_register(operator, commands, timeout_s=args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # stamen.cli reports ValueError, exit 2
        raise ValueError(str(exc)) from None
    for proc in done:
        print(proc.stdout.strip())
    return 0


def _model(args: argparse.Namespace) -> int:
    from .model import export_initial_model

    digest = export_initial_model(args.scenario, args.overrides, args.out)
    print(f"wrote {args.out} (+ {args.out.name}.data); model hash {digest}")
    print("provision each device with it: stamen device init DIR --model", args.out, "...")
    return 0


def _install_unit(args: argparse.Namespace) -> int:
    from .unit import UnitConfig, render_device_unit

    text = render_device_unit(UnitConfig(config=args.config, exec_path=args.exec_path, user=args.user))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}; then: systemctl daemon-reload && systemctl enable --now {args.out.stem}")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed ``deploy`` or ``device install-unit`` command; returns the exit code."""
    if getattr(args, "deploy_action", None) == "init":
        return _init(args)
    if getattr(args, "deploy_action", None) == "register":
        return _register(args)
    if getattr(args, "deploy_action", None) == "model":
        return _model(args)
    if hasattr(args, "exec_path"):
        return _install_unit(args)
    raise ValueError("no deploy command given")


def _parser() -> argparse.ArgumentParser:
    from stamen.cli import OneLineParser  # (stamen.cli imports this module's commands lazily too)

    parser = OneLineParser(prog="python -m stamen.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="deploy_action", required=True)
    _add_actions(sub)
    add_install_unit_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stamen.deploy init|register|install-unit ...``; exit 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        return dispatch(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"stamen: error: {exc}", file=sys.stderr)
        return 2
