"""A peer's mutual-TLS identity: its CA, certificate and key, read and checked at start.

Every peer holds the CA certificate, its own certificate and its own key (issued by
`hearsay certs`, peer/tools/certs.py). Peers accept a connection only from a
certificate the CA signed, and every peer certificate carries the same DNS name
(``PEER_DNS_NAME``) besides its own name: a caller dials peers by IP address or
whatever name it was seeded with, so it checks that name, not the address, and the
CA signature is what decides membership of the cluster.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

PEER_DNS_NAME = "hearsay-peer"


class CertError(ValueError):
    """A certificate, key or CA that cannot be used; one line, naming the file."""


@dataclass(frozen=True)
class TlsIdentity:
    """What a peer needs for mutual TLS, validated: the paths and their PEM contents."""

    ca_path: Path
    cert_path: Path
    key_path: Path
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    subject: str
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise CertError(f"{what} {path}: {e.strerror or e}") from None


def _parse_cert(data: bytes, path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{what} {path}: not a PEM certificate") from None


def _parse_key(data: bytes, path: Path, what: str) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertError(f"{what} {path}: not an unencrypted PEM private key") from None


def read_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    return _parse_cert(_read(path, what), path, what)


def read_key(path: Path, what: str = "key") -> object:
    return _parse_key(_read(path, what), path, what)


def same_key(key: object, cert: x509.Certificate) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(public().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt))


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertError(f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                        "(is this machine's clock right?)")
    if now > cert.not_valid_after_utc:
        raise CertError(f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                        "issue a new one with `hearsay certs`")


def load_identity(ca: str | Path, cert: str | Path, key: str | Path,
                  now: datetime.datetime | None = None) -> TlsIdentity:
    """Read and check a peer's TLS files; ``CertError`` with one line saying what is wrong.

    Checked here rather than at the first handshake: a peer with a wrong file would
    otherwise start, look healthy, and fail every exchange.
    """
    now = now or _now()
    ca_path, cert_path, key_path = Path(ca), Path(cert), Path(key)
    ca_pem, cert_pem, key_pem = _read(ca_path, "tls_ca"), _read(cert_path, "tls_cert"), _read(key_path, "tls_key")
    ca_cert = _parse_cert(ca_pem, ca_path, "tls_ca")
    peer_cert = _parse_cert(cert_pem, cert_path, "tls_cert")
    peer_key = _parse_key(key_pem, key_path, "tls_key")
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertError(f"tls_ca {ca_path} is not a CA certificate")
    if not same_key(peer_key, peer_cert):
        raise CertError(f"tls_key {key_path} is not the key of tls_cert {cert_path}")
    try:
        peer_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"tls_cert {cert_path} is not signed by tls_ca {ca_path}") from None
    _check_validity(ca_cert, ca_path, "tls_ca", now)
    _check_validity(peer_cert, cert_path, "tls_cert", now)
    try:
        san = peer_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if PEER_DNS_NAME not in dns_names:
        raise CertError(f"tls_cert {cert_path} does not name {PEER_DNS_NAME!r}, which other peers check: "
                        "issue it with `hearsay certs`")
    subject = peer_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return TlsIdentity(ca_path=ca_path, cert_path=cert_path, key_path=key_path,
                       ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem,
                       subject=str(subject[0].value) if subject else "", not_after=peer_cert.not_valid_after_utc)
