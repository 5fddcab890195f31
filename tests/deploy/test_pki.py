"""CA and server certificate: structure, SANs, validity, and a real TLS handshake that checks them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.deploy.keys import private_pem
from stamen.deploy.pki import make_ca, make_server_cert, san_names

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return make_ca(now=NOW)


def test_ca_is_a_p384_ca_that_signs_end_entities_only(ca) -> None:  # type: ignore[no-untyped-def]
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert isinstance(ca.key.curve, ec.SECP384R1)
    ca.cert.verify_directly_issued_by(ca.cert)  # self-signed
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_server_cert_validity_is_hand_computed_and_clamped(ca) -> None:  # type: ignore[no-untyped-def]
    pair = make_server_cert(ca, ["superlink"], ["10.0.0.1"], days=10, now=NOW)
    start = NOW - dt.timedelta(minutes=5)  # backdated for lagging device clocks
    assert pair.cert.not_valid_before_utc == start
    assert pair.cert.not_valid_after_utc == start + dt.timedelta(days=10)
    long = make_server_cert(ca, ["superlink"], [], days=36500, now=NOW)
    assert long.cert.not_valid_after_utc == ca.cert.not_valid_after_utc  # never outlives its CA


def test_server_cert_names_exactly_the_given_hosts(ca) -> None:  # type: ignore[no-untyped-def]
    pair = make_server_cert(ca, ["localhost", "superlink", "LOCALHOST"], ["127.0.0.1", "::1"], now=NOW)
    san = pair.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    pair.cert.verify_directly_issued_by(ca.cert)
    eku = pair.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not pair.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    ("dns", "ips", "match"),
    [([], [], "at least one"), (["a b"], [], "bad DNS name"), ([], ["300.1.1.1"], "'300.1.1.1'")],
)
def test_bad_san_input_names_the_value(dns: list[str], ips: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        san_names(dns, ips)


def test_bad_validity_is_refused() -> None:
    with pytest.raises(ValueError, match="validity must be"):
        make_ca(days=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.ip_addresses(), min_size=1, max_size=6))
def test_san_keeps_every_ip_once_in_order(ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    san = san_names([], [str(ip) for ip in ips])
    assert san.get_values_for_type(x509.IPAddress) == list(dict.fromkeys(ips))


def _handshake(ca_file: Path, cert_file: Path, key_file: Path, server_hostname: str) -> str | None:
    """TLS over a socketpair: the server presents cert_file, the client verifies against ca_file.
    Returns None on success, else the client's error text."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            c.sendall(b"x")
        return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc)
    finally:
        t.join(timeout=10)
        a.close()
        b.close()


def test_tls_handshake_accepts_san_names_and_refuses_others(tmp_path: Path) -> None:
    ca = make_ca()  # issued now: the handshake checks validity against the real clock
    pair = make_server_cert(ca, ["superlink", "localhost"], ["127.0.0.1"])
    ca_file, cert_file, key_file = tmp_path / "ca.crt", tmp_path / "server.pem", tmp_path / "server.key"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(private_pem(pair.key))
    assert _handshake(ca_file, cert_file, key_file, "superlink") is None
    assert _handshake(ca_file, cert_file, key_file, "127.0.0.1") is None
    err = _handshake(ca_file, cert_file, key_file, "evil.example")
    assert err is not None and "match" in err.lower()
    other_ca = tmp_path / "other.crt"
    other_ca.write_bytes(make_ca().cert.public_bytes(serialization.Encoding.PEM))
    err = _handshake(other_ca, cert_file, key_file, "superlink")
    assert err is not None and "certificate" in err.lower()
