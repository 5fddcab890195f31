"""``stamen deploy init``: everything a TLS + node-authenticated federation needs, in one folder.

Layout (one sub-folder per role, so each container mounts only what it needs)::

    OUT/ca/ca.crt, ca.key                 the CA (keep ca.key offline; optionally encrypted)
    OUT/superlink/ca.crt, server.pem, server.key, superexec.secret
    OUT/server/ca.crt, update-signing.pem, update-signing.pub.pem, superexec.secret
    OUT/nodes/node-I/ca.crt, node.key, node.key.pub, update-signing.pub.pem,
                    device-signing.pem, device-signing.endorsement
    OUT/operator/config.toml, ca.crt, register.sh
    OUT/manifest.json                      what is where, key ids, certificate SANs

Existing private keys are kept (and reported as kept) unless ``force``; the CA is loaded to sign a
missing or renewed server certificate. Public copies (certificates, public keys, config) are
refreshed on every run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stamen.protocols.signing import Verifier

from .keys import (
    Owner,
    device_update_key,
    load_private_pem,
    new_node_key,
    new_secret,
    private_pem,
    signing_key_files,
    write_private,
    write_public,
)
from .pki import CertPair, make_ca, make_server_cert
from .register import connection_toml, node_register_commands, render_register_script

__all__ = ["DEFAULT_DNS", "DEFAULT_IPS", "InitOptions", "InitReport", "deploy_init"]

DEFAULT_DNS = ("localhost", "superlink")  # "superlink": the compose service name
DEFAULT_IPS = ("127.0.0.1",)
CONNECTION = "stamen"
DEVICE_KEY, DEVICE_ENDORSEMENT = "device-signing.pem", "device-signing.endorsement"


@dataclass(frozen=True)
class InitOptions:
    """What ``deploy init`` makes; every field has a working default for a local trial.

    Attributes
    ----------
    nodes : int
        Node identity keys to make, 0..1000 (default 2). Real devices make their own key instead.
    dns_names, ips : tuple of str
        Server certificate SAN (default localhost + superlink; 127.0.0.1).
    address : str
        ``HOST:PORT`` the operator's ``flwr`` uses (default ``127.0.0.1:9093``).
    passphrase : bytes, optional
        Encrypts ``ca.key`` and ``update-signing.pem`` (>= 8 bytes). Node and TLS server keys stay
        unencrypted: Flower loads them without a passphrase.
    force : bool
        Replace existing private keys (a full re-key; see docs/deployment.md on rotation).
    renew_server_cert : bool
        Issue a new server key and certificate from the existing CA (SAN change, expiry).
    owner : (uid, gid), optional
        Owner of the role folders' private files (49999:49999 for the containers' user).
    ca_days, server_days : int
        Validity of the CA (default 3650) and server certificate (default 397) in days.
    """

    nodes: int = 2
    dns_names: tuple[str, ...] = DEFAULT_DNS
    ips: tuple[str, ...] = DEFAULT_IPS
    address: str = "127.0.0.1:9093"
    passphrase: bytes | None = None
    force: bool = False
    renew_server_cert: bool = False
    owner: Owner | None = None
    ca_days: int = 3650
    server_days: int = 397

    def __post_init__(self) -> None:
        if not 0 <= self.nodes <= 1000:
            raise ValueError(f"nodes must be 0..1000, got {self.nodes}")


@dataclass
class InitReport:
    """What :func:`deploy_init` did."""

    out_dir: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    register_commands: list[list[str]] = field(default_factory=list)


def _private(report: InitReport, path: Path, make: bytes, opts: InitOptions, owner: bool = True) -> bool:
    """Write a private file unless it exists (then keep it); True when written."""
    if path.exists() and not opts.force:
        report.kept.append(path)
        return False
    write_private(path, make, force=opts.force, owner=opts.owner if owner else None)
    report.created.append(path)
    return True


def _ca(out: Path, opts: InitOptions, report: InitReport) -> CertPair:
    key_path, cert_path = out / "ca" / "ca.key", out / "ca" / "ca.crt"
    if key_path.exists() and cert_path.exists() and not opts.force:
        key = load_private_pem(key_path, opts.passphrase)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC private key")
        report.kept += [key_path, cert_path]
        return CertPair(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
    ca = make_ca(days=opts.ca_days)
    write_private(key_path, private_pem(ca.key, opts.passphrase), force=True)
    write_public(cert_path, ca.cert.public_bytes(serialization.Encoding.PEM))
    report.created += [key_path, cert_path]
    return ca


def _server_cert(out: Path, ca: CertPair, opts: InitOptions, report: InitReport, new_ca: bool) -> None:
    key_path, cert_path = out / "superlink" / "server.key", out / "superlink" / "server.pem"
    if key_path.exists() and cert_path.exists() and not (opts.force or opts.renew_server_cert or new_ca):
        report.kept += [key_path, cert_path]
        return
    pair = make_server_cert(ca, opts.dns_names, opts.ips, days=opts.server_days)
    write_private(key_path, private_pem(pair.key), force=True, owner=opts.owner)
    write_public(cert_path, pair.cert.public_bytes(serialization.Encoding.PEM))
    report.created += [key_path, cert_path]


def _signing_key(out: Path, opts: InitOptions, report: InitReport) -> bytes:
    """Make the update-signing key if missing; return its public PEM."""
    private, public = out / "server" / "update-signing.pem", out / "server" / "update-signing.pub.pem"
    if private.exists() and public.exists() and not opts.force:
        report.kept.append(private)
        return public.read_bytes()
    key_pem, pub_pem = signing_key_files(opts.passphrase)
    write_private(private, key_pem, force=True, owner=opts.owner)
    write_public(public, pub_pem)
    report.created += [private, public]
    return pub_pem


def _node(out: Path, index: int, opts: InitOptions, report: InitReport) -> Path:
    """Make node ``index``'s identity key and its device update key if missing; return the node's
    public key path."""
    folder = out / "nodes" / f"node-{index}"
    key_path, pub_path = folder / "node.key", folder / "node.key.pub"
    if key_path.exists() and pub_path.exists() and not opts.force:
        report.kept.append(key_path)
        _device_key(folder, opts, report, renewed=False)
        return pub_path
    private, public = new_node_key()
    write_private(key_path, private, force=True, owner=opts.owner)
    write_public(pub_path, public)
    report.created += [key_path, pub_path]
    _device_key(folder, opts, report, renewed=True)
    return pub_path


def _device_key(folder: Path, opts: InitOptions, report: InitReport, renewed: bool) -> None:
    """The device's update-signing key and the node key's endorsement (re-made with a new node key)."""
    key_path, endorsement = folder / DEVICE_KEY, folder / DEVICE_ENDORSEMENT
    if key_path.exists() and endorsement.exists() and not (renewed or opts.force):
        report.kept.append(key_path)
        return
    private, signed = device_update_key((folder / "node.key").read_bytes())
    write_private(key_path, private, force=True, owner=opts.owner)
    write_public(endorsement, signed)
    report.created += [key_path, endorsement]


def _superexec_secret(out: Path, opts: InitOptions, report: InitReport) -> None:
    """The same SuperExec auth secret on both sides of the Runtime API (SuperLink, ServerApp)."""
    paths = [out / "superlink" / "superexec.secret", out / "server" / "superexec.secret"]
    existing = set() if opts.force else {p.read_bytes() for p in paths if p.exists()}
    if len(existing) > 1:
        raise ValueError(f"{out}: superlink/ and server/ hold different superexec.secret files; use --force")
    secret = existing.pop() if existing else new_secret()
    for path in paths:
        _private(report, path, secret, opts)


def _public_copies(out: Path, ca_pem: bytes, signing_pub: bytes, node_dirs: Sequence[Path]) -> None:
    for role in ("superlink", "server", "operator", *(str(d.relative_to(out)) for d in node_dirs)):
        write_public(out / role / "ca.crt", ca_pem)
    for folder in node_dirs:
        write_public(folder / "update-signing.pub.pem", signing_pub)


def _manifest(out: Path, opts: InitOptions, signing_pub: Path, pubs: Sequence[Path]) -> dict[str, object]:
    cert = x509.load_pem_x509_certificate((out / "superlink" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "connection": CONNECTION,
        "address": opts.address,
        "server_cert_san": [str(v.value) for v in san],
        "server_cert_not_after": cert.not_valid_after_utc.isoformat(),
        "update_signing_key_id": sorted(Verifier.from_files(signing_pub).key_ids)[0],
        "nodes": {p.parent.name: p.read_text().split()[1] for p in pubs},
    }


def deploy_init(out_dir: str | Path, options: InitOptions | None = None) -> InitReport:
    """Create (or complete) the key and certificate folder of a deployment; see the module docs.

    Raises
    ------
    ValueError
        On bad options, an unreadable or wrongly encrypted CA key.
    """
    opts = options or InitOptions()
    out = Path(out_dir).resolve()
    report = InitReport(out)
    had_ca = (out / "ca" / "ca.key").exists() and not opts.force
    ca = _ca(out, opts, report)
    _server_cert(out, ca, opts, report, new_ca=not had_ca)
    signing_pub = _signing_key(out, opts, report)
    _superexec_secret(out, opts, report)
    pubs = [_node(out, i, opts, report) for i in range(opts.nodes)]
    _public_copies(
        out, ca.cert.public_bytes(serialization.Encoding.PEM), signing_pub, [p.parent for p in pubs]
    )
    operator = out / "operator"
    write_public(
        operator / "config.toml", connection_toml(CONNECTION, opts.address, operator / "ca.crt").encode()
    )
    report.register_commands = node_register_commands(out, CONNECTION)
    write_public(
        operator / "register.sh", render_register_script(operator, report.register_commands).encode()
    )
    (operator / "register.sh").chmod(0o755)
    manifest = _manifest(out, opts, out / "server" / "update-signing.pub.pem", pubs)
    write_public(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return report
