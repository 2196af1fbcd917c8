"""`hearsay certs` and the checks a peer makes on its TLS files before it starts."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509

from peer.tools import certs
from peer.tools.certs import make_certs
from peer.transport.tls_identity import PEER_DNS_NAME, CertError, load_identity
from peer.tools.cli import main
from peer.runtime.config import ConfigError, PeerConfig, from_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    make_certs(tmp_path / "pki", ["peer-0", "peer-1"], dns=["gossip.example"], ips=["10.0.0.7"])
    return tmp_path / "pki"


def test_certs_are_signed_by_the_ca_and_name_every_peer_dns_name(cluster: Path) -> None:
    ca = x509.load_pem_x509_certificate((cluster / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert = x509.load_pem_x509_certificate((cluster / "peer-0.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["peer-0", PEER_DNS_NAME, "gossip.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    identity = load_identity(cluster / "ca.pem", cluster / "peer-1.pem", cluster / "peer-1.key")
    assert identity.subject == "peer-1"


def test_keys_are_private_to_their_owner(cluster: Path) -> None:
    for key in ("ca.key", "peer-0.key", "peer-1.key"):
        assert mode(cluster / key) == 0o600, key
    assert mode(cluster / "peer-0.pem") == 0o644


def test_a_later_run_reuses_the_ca_so_peers_can_be_added(cluster: Path) -> None:
    before = (cluster / "ca.pem").read_bytes()
    issued = make_certs(cluster, ["peer-2"])
    assert not issued.ca_created and (cluster / "ca.pem").read_bytes() == before
    load_identity(cluster / "ca.pem", cluster / "peer-2.pem", cluster / "peer-2.key")


@pytest.mark.parametrize("names, message", [
    (["peer-0", "peer-0"], "twice"),
    (["-bad"], "letters, digits"),
    (["a/b"], "letters, digits"),
    (["ca"], "taken by the CA"),
])
def test_unusable_peer_names_are_refused(tmp_path: Path, names: list[str], message: str) -> None:
    with pytest.raises(CertError, match=message):
        make_certs(tmp_path, names)


def test_half_a_ca_is_not_silently_replaced(cluster: Path) -> None:
    (cluster / "ca.key").unlink()
    with pytest.raises(CertError, match="ca.key does not"):
        make_certs(cluster, ["peer-2"])


def test_load_identity_names_what_is_wrong(cluster: Path, tmp_path: Path) -> None:
    c = cluster
    other = tmp_path / "other"
    make_certs(other, ["stranger"])
    cases = [
        ((c / "ca.pem", c / "peer-0.pem", c / "nope.key"), "tls_key .*nope.key: no such file"),
        ((c / "ca.pem", c / "peer-0.pem", c / "peer-1.key"), "is not the key of tls_cert"),
        ((other / "ca.pem", c / "peer-0.pem", c / "peer-0.key"), "is not signed by tls_ca"),
        ((c / "peer-1.pem", c / "peer-0.pem", c / "peer-0.key"), "is not a CA certificate"),
        ((c / "ca.pem", c / "peer-0.key", c / "peer-0.key"), "not a PEM certificate"),
        ((c / "ca.pem", c / "peer-0.pem", c / "peer-0.pem"), "not an unencrypted PEM private key"),
    ]
    for files, message in cases:
        with pytest.raises(CertError, match=message):
            load_identity(*files)


def test_certificates_outside_their_validity_are_refused(cluster: Path) -> None:
    files = (cluster / "ca.pem", cluster / "peer-0.pem", cluster / "peer-0.key")
    now = datetime.datetime.now(datetime.UTC)
    with pytest.raises(CertError, match="expired on"):
        load_identity(*files, now=now + datetime.timedelta(days=certs.DEFAULT_DAYS + 1))
    with pytest.raises(CertError, match="not valid before"):
        load_identity(*files, now=now - datetime.timedelta(days=1))


def tls_config(cluster: Path, name: str = "peer-0", **overrides: object) -> PeerConfig:
    values: dict[str, object] = {"tls_ca": str(cluster / "ca.pem"), "tls_cert": str(cluster / f"{name}.pem"),
                                 "tls_key": str(cluster / f"{name}.key"), **overrides}
    return PeerConfig(**values)  # type: ignore[arg-type]


def test_config_checks_tls_files_at_start(cluster: Path) -> None:
    identity = tls_config(cluster, require_tls=True).validate().tls_identity()
    assert identity is not None and identity.subject == "peer-0"
    assert PeerConfig().validate().tls_identity() is None  # plaintext stays the default
    with pytest.raises(ConfigError, match="require_tls is set"):
        PeerConfig(require_tls=True).validate()
    with pytest.raises(ConfigError, match="go together: tls_key not set"):
        tls_config(cluster, tls_key="").validate()
    with pytest.raises(ConfigError, match="is not the key of"):
        tls_config(cluster, tls_key=str(cluster / "peer-1.key")).validate()


def test_tls_options_come_from_the_environment(cluster: Path) -> None:
    env = {"HEARSAY_TLS_CA": str(cluster / "ca.pem"), "HEARSAY_REQUIRE_TLS": "true"}
    assert from_env(env) == {"tls_ca": str(cluster / "ca.pem"), "require_tls": True}


def test_certs_command_prints_what_it_wrote_and_fails_in_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "--out", str(out), "peer-0", "--ip", "127.0.0.1", "--days", "30"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'ca.pem'} (new)" in printed and str(out / "peer-0.key") in printed
    assert main(["certs", "--out", str(out), "peer-1"]) == 0
    assert "(existing, reused)" in capsys.readouterr().out
    assert main(["certs", "--out", str(out), "peer-2", "--ip", "not-an-ip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an IP address" in err
