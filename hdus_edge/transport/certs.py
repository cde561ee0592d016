"""TLS material for broker listeners: a CA, a server certificate, per-device client certificates.

Keys are EC P-256 (fast to generate, accepted by OpenSSL in Mosquitto and by Python's ssl). Key
generation draws from the OS's secure random source on purpose: TLS keys must not be reproducible,
so unlike the rest of hdus-edge this module takes no seed. Private keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdated so a device whose clock lags a little still accepts a fresh certificate.
_CLOCK_SKEW = dt.timedelta(days=1)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A certificate authority that can sign server and client certificates."""

    pair: CertPair
    certificate: x509.Certificate = field(repr=False)
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def cert(self) -> Path:
        """The CA certificate (give it to brokers and clients as the trust anchor)."""
        return self.pair.cert


def make_ca(directory: Path, common_name: str = "hdus-edge CA", days: int = 3650) -> Authority:
    """Create a self-signed CA in ``directory`` (``ca.crt``, ``ca.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = _write(Path(directory), "ca", cert, key)
    return Authority(pair=pair, certificate=cert, private_key=key)


def make_server_cert(
    ca: Authority,
    directory: Path,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    name: str = "server",
    days: int = 825,
) -> CertPair:
    """A broker certificate valid for ``hosts`` (IP addresses and DNS names, as SANs)."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return _issue(ca, Path(directory), name, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans, days)


def make_client_cert(ca: Authority, directory: Path, common_name: str, days: int = 825) -> CertPair:
    """A client certificate whose CN is ``common_name`` (the device id: Mosquitto's
    ``use_identity_as_username`` makes it the user name its ACL sees)."""
    return _issue(ca, Path(directory), common_name, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)


def _issue(
    ca: Authority,
    directory: Path,
    stem: str,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    days: int,
) -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return _write(directory, stem, cert, key)


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    return CertPair(cert=cert_path, key=key_path)


def load_ca(directory: Path) -> Authority:
    """The CA that ``make_ca`` wrote in ``directory`` (to issue more certificates later, e.g. at readmission)."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'} is not an EC private key")
    return Authority(pair=CertPair(directory / "ca.crt", directory / "ca.key"), certificate=cert, private_key=key)
