"""Issuing a cluster CA and per-peer certificates for mutual TLS between peers (`hearsay certs`).

Reading and checking them at a peer's start is peer/transport/tls_identity.py.

Every peer holds the CA certificate, its own certificate and its own key; the CA key
stays with whoever runs `hearsay certs` (it only signs). Peers accept a connection
only from a certificate the CA signed, and every peer certificate carries the same
DNS name (``PEER_DNS_NAME``) besides its own name: a caller dials peers by IP
address or whatever name it was seeded with, so it checks that name, not the
address, and the CA signature is what decides membership of the cluster.

Keys are ECDSA P-256 (small, fast handshakes, accepted by both OpenSSL and gRPC's
BoringSSL). Files are PEM; keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer.transport.tls_identity import PEER_DNS_NAME, CertError, read_cert, read_key, same_key

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
DEFAULT_DAYS = 825  # the longest validity TLS clients commonly still accept for a leaf
CA_DAYS = 3650
# Certificates are back-dated a little: a peer whose clock runs behind must still accept them.
CLOCK_SKEW = datetime.timedelta(minutes=5)
# A peer name becomes a file name and a DNS SAN: keep it to what both allow.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")


@dataclass(frozen=True)
class PeerFiles:
    name: str
    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(common_name: str = "hearsay cluster CA", days: int = CA_DAYS,
              now: datetime.datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign peer certificates and nothing below them (path length 0)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_peer_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str,
                    dns: list[str] | None = None, ips: list[str] | None = None, days: int = DEFAULT_DAYS,
                    now: datetime.datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for peer ``name``, usable as both TLS server and client, signed by the CA."""
    check_name(name)
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([name, PEER_DNS_NAME, *(dns or [])])]
    for ip in ips or []:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertError(f"--ip {ip!r} is not an IP address") from None
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject)
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise CertError(f"peer name {name!r}: use letters, digits, '.' and '-' (at most 63, not starting with "
                        "'.' or '-')")
    if name == Path(CA_CERT_FILE).stem:
        raise CertError(f"peer name {name!r} is taken by the CA's own files")


# --- files -------------------------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary name with ``mode`` from the start, then rename: a key is never
    readable by others, not even for a moment, and a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask and ignored for an existing file
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_pair(cert_path: Path, key_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_or_create_ca(directory: Path, days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey,
                                                                       x509.Certificate, bool]:
    """The CA in ``directory`` (so peers can be added later), or a new one; the bool says it is new."""
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if cert_path.exists() != key_path.exists():
        present, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise CertError(f"{present} exists but {missing} does not: restore it, or remove both for a new CA")
    if cert_path.exists():
        cert = read_cert(cert_path)
        key = read_key(key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not same_key(key, cert):
            raise CertError(f"{key_path} is not the key of {cert_path}")
        return key, cert, False
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = create_ca(days=days)
    write_pair(cert_path, key_path, key, cert)
    return key, cert, True


def write_peer(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str,
               dns: list[str] | None = None, ips: list[str] | None = None, days: int = DEFAULT_DAYS) -> PeerFiles:
    key, cert = issue_peer_cert(ca_key, ca_cert, name, dns=dns, ips=ips, days=days)
    files = PeerFiles(name, directory / f"{name}.pem", directory / f"{name}.key")
    write_pair(files.cert, files.key, key, cert)
    return files


@dataclass(frozen=True)
class Issued:
    """What ``make_certs`` wrote."""

    ca_cert: Path
    ca_key: Path
    ca_created: bool
    peers: list[PeerFiles]


def make_certs(directory: str | Path, names: list[str], dns: list[str] | None = None, ips: list[str] | None = None,
               days: int = DEFAULT_DAYS) -> Issued:
    """`hearsay certs`: the CA in ``directory`` (made if absent) and a certificate per name."""
    if days < 1:
        raise CertError("--days must be at least 1")
    if len(set(names)) != len(names):
        raise CertError("a peer name is given twice")
    for name in names:
        check_name(name)
    out = Path(directory)
    ca_key, ca_cert, created = load_or_create_ca(out)
    if ca_cert.not_valid_after_utc < _now() + datetime.timedelta(days=days):
        raise CertError(f"the CA in {out} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before certificates "
                        f"valid for {days} days would: use fewer --days, or a new directory for a new CA")
    peers = [write_peer(out, ca_key, ca_cert, name, dns=dns, ips=ips, days=days) for name in names]
    return Issued(out / CA_CERT_FILE, out / CA_KEY_FILE, created, peers)
