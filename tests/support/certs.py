"""A throw-away PKI for the TLS tests, made at test time.

Key material is never committed: a checked-in key expires, gets copied into
production by mistake, and trips secret scanners. Instead one session-scoped
fixture builds a small CA and the certificates the tests need, with EC P-256
keys because they are generated in milliseconds.

Wire the fixture from tests/conftest.py with
``from tests.support.certs import pki  # noqa: F401``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LIFETIME = datetime.timedelta(days=2)
# Backdated so a clock a little behind the test host's still accepts them.
_BACKDATE = datetime.timedelta(hours=1)

Name = str | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of PEM files; every key is unencrypted PKCS#8."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    willi_cert: Path  # Willi's front: willi.test, localhost, 127.0.0.1, ::1
    willi_key: Path
    upstream_cert: Path  # an upstream's: localhost, 127.0.0.1
    upstream_key: Path
    untrusted_cert: Path  # self-signed, localhost, 127.0.0.1: not under the CA
    untrusted_key: Path
    client_cert: Path  # a client certificate signed by the CA
    client_key: Path


@dataclass(frozen=True, slots=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Willi tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(names: list[Name]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [
        x509.DNSName(n) if isinstance(n, str) else x509.IPAddress(n) for n in names
    ]
    return x509.SubjectAlternativeName(general)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _make_ca() -> tuple[_Issuer, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Willi test CA")
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _Issuer(name, key), cert


def _make_leaf(
    common_name: str, names: list[Name], usage: x509.ObjectIdentifier, issuer: _Issuer | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate; issuer None makes it self-signed (the untrusted one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    signer = issuer or _Issuer(subject, key)
    builder = (
        _builder(subject, signer.name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(signer.key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Create the test CA and every certificate the TLS tests use, in directory."""
    directory.mkdir(parents=True, exist_ok=True)
    loopback4 = ipaddress.IPv4Address("127.0.0.1")
    loopback6 = ipaddress.IPv6Address("::1")
    server = ExtendedKeyUsageOID.SERVER_AUTH
    ca, ca_cert = _make_ca()
    ca_paths = _write(directory, "ca", ca_cert, ca.key)
    willi = _make_leaf("willi.test", ["willi.test", "localhost", loopback4, loopback6], server, ca)
    upstream = _make_leaf("localhost", ["localhost", loopback4], server, ca)
    untrusted = _make_leaf("localhost", ["localhost", loopback4], server, None)
    client = _make_leaf("client.willi.test", [], ExtendedKeyUsageOID.CLIENT_AUTH, ca)
    return Pki(
        directory,
        *ca_paths,
        *_write(directory, "willi", *willi),
        *_write(directory, "upstream", *upstream),
        *_write(directory, "untrusted", *untrusted),
        *_write(directory, "client", *client),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One PKI for the whole test session."""
    return make_pki(tmp_path_factory.mktemp("pki"))
