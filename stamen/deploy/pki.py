"""A private certificate authority and the SuperLink's TLS server certificate (``cryptography``).

Flower 1.41 uses server-side TLS only: the SuperLink presents ``server.pem`` (signed by our CA) on its
one HTTP port, and every SuperNode, SuperExec and ``flwr`` CLI verifies it against ``ca.crt``
(``--root-certificates``). There is no client certificate; nodes authenticate with their ECDSA keys
(see :mod:`stamen.deploy.keys`). The server certificate must name every host name and address that
clients dial in its subjectAltName, or the handshake fails with a host name mismatch.

Keys are ECDSA P-384 (the curve Flower uses for node keys too); signatures SHA-384.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPair", "make_ca", "make_server_cert", "parse_ips", "san_names"]

_CLOCK_SKEW = dt.timedelta(minutes=5)  # not-valid-before is backdated: device clocks may lag a little


@dataclass(frozen=True)
class CertPair:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise ValueError(f"common name must be 1..64 characters, got {common_name!r}")
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stamen deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if not 1 <= days <= 36500:
        raise ValueError(f"validity must be 1..36500 days, got {days}")
    start = (now or dt.datetime.now(dt.timezone.utc)) - _CLOCK_SKEW
    return start, start + dt.timedelta(days=days)


def make_ca(common_name: str = "stamen CA", days: int = 3650, now: dt.datetime | None = None) -> CertPair:
    """A self-signed CA that may sign end-entity certificates only (path length 0).

    Parameters
    ----------
    common_name : str
        Subject CN, 1..64 characters.
    days : int
        Validity in days, 1..36500 (default 3650: the CA is rotated rarely; see docs/deployment.md).
    now : datetime, optional
        Issue time (UTC); defaults to the current time. Tests pin it.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days, now)
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return CertPair(key, cert)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def parse_ips(values: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Parse IP literals for the SAN; a bad one raises ``ValueError`` naming it."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
    return out


def san_names(dns_names: Sequence[str], ips: Sequence[str]) -> x509.SubjectAlternativeName:
    """The subjectAltName extension for ``dns_names`` and ``ips`` (duplicates dropped, order kept).

    Raises
    ------
    ValueError
        If both lists are empty, a DNS name is empty or holds a space, or an IP does not parse.
    """
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip().lower() for n in dns_names):
        if not name or " " in name or len(name) > 253:
            raise ValueError(f"bad DNS name for the server certificate: {name!r}")
        entries.append(x509.DNSName(name))
    entries.extend(x509.IPAddress(ip) for ip in dict.fromkeys(parse_ips(ips)))
    if not entries:
        raise ValueError("the server certificate needs at least one DNS name or IP address")
    return x509.SubjectAlternativeName(entries)


def make_server_cert(
    ca: CertPair,
    dns_names: Sequence[str],
    ips: Sequence[str],
    days: int = 397,
    now: dt.datetime | None = None,
) -> CertPair:
    """A TLS server certificate for the SuperLink, signed by ``ca``.

    Parameters
    ----------
    ca : CertPair
        The issuing CA (from :func:`make_ca`).
    dns_names, ips : sequence of str
        Every name and address clients dial (the subjectAltName); the first DNS name (else the first
        IP) is also the subject CN.
    days : int
        Validity in days, 1..36500 (default 397, the public-web maximum; renew with ``deploy init
        --renew-server-cert``).
    now : datetime, optional
        Issue time (UTC); defaults to the current time.
    """
    san = san_names(dns_names, ips)
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days, now)
    first = san[0].value
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(first)))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start, ca.cert.not_valid_before_utc))
        .not_valid_after(min(end, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.key, hashes.SHA384())
    )
    return CertPair(key, cert)
