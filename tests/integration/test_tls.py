"""Mutual TLS between peers: who gets in, who does not, and that refusals are reported.

The first tests put a real ``TlsFront`` and a real gRPC server (the gossip ``Exchange``)
in the test's event loop and dial it with real gRPC clients holding each kind of bad
credential: every refusal must arrive with the right reason. The last test runs three
honest peers with certificates of one cluster CA plus two intruders (one with a
certificate from another CA, one in plaintext) as real processes on loopback.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from peer.tools import certs
from peer.transport import tls_identity
from peer.transport.tls_identity import TlsIdentity
from peer.tools.cluster import tls_args
from peer.runtime.config import PeerConfig
from tests.trainers import build_trainer
from peer.tools.procs import PeerProcess, free_ports, wait_for
from peer.transport.channels import channel_credentials
from peer.transport.errors import ExchangeRefused
from peer.transport.grpc_transport import GossipClient, GossipServicer, add_to_server, server_options
from peer.transport.tls_front import TlsFront, TlsRefused, server_context
from tests.conftest import COMMON_PEER_ARGS, stop_peers
from tests.integration.test_learning_together import PEERS, SPLIT, STEPS, merged_from_both_others, peer_args

REFUSAL_DEADLINE_S = 10.0


def identity(ca: Path, cert: Path, key: Path) -> TlsIdentity:
    """Files as a client holds them, without the checks a peer makes at start (an intruder's
    files need not be consistent with each other)."""
    return TlsIdentity(ca, cert, key, ca.read_bytes(), cert.read_bytes(), key.read_bytes(), "", datetime.datetime.now())


@dataclass
class Pki:
    cluster: Path
    other: Path

    def ours(self, name: str) -> TlsIdentity:
        return tls_identity.load_identity(self.cluster / "ca.pem", self.cluster / f"{name}.pem", self.cluster / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    cluster, other = tmp_path_factory.mktemp("cluster-ca"), tmp_path_factory.mktemp("other-ca")
    certs.make_certs(cluster, ["peer-0", "peer-1", "peer-2"], ips=["127.0.0.1"])
    certs.make_certs(other, ["intruder"])
    ca_key, ca_cert, _ = certs.load_or_create_ca(cluster)
    month_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    key, cert = certs.issue_peer_cert(ca_key, ca_cert, "expired", days=1, now=month_ago)
    certs.write_pair(cluster / "expired.pem", cluster / "expired.key", key, cert)
    return Pki(cluster, other)


@dataclass
class Front:
    front: TlsFront
    address: str
    refusals: asyncio.Queue[TlsRefused]

    async def next_refusal(self) -> TlsRefused:
        return await asyncio.wait_for(self.refusals.get(), REFUSAL_DEADLINE_S)


@pytest.fixture
async def front(pki: Pki) -> AsyncIterator[Front]:
    """peer-0's gossip server behind its TLS front; the handler echoes every packet."""
    refusals: asyncio.Queue[TlsRefused] = asyncio.Queue()

    async def echo(packet: bytearray, _peer: str) -> bytearray:
        return packet

    tls_front = TlsFront(server_context(pki.ours("peer-0")), on_refused=refusals.put_nowait)
    server = grpc.aio.server(options=server_options())
    add_to_server(GossipServicer(echo, 1 << 24, lambda e: None), server)
    server.add_insecure_port(tls_front.backend_target)
    port = await tls_front.bind("127.0.0.1", 0)
    await server.start()
    tls_front.start()
    yield Front(tls_front, f"127.0.0.1:{port}", refusals)
    tls_front.stop_listening()
    await server.stop(1)
    await tls_front.close()


async def exchange(address: str, credentials: grpc.ChannelCredentials | None, packet: bytes = b"x" * 3000) -> bytes:
    client = GossipClient(1 << 24, credentials)
    try:
        return bytes(await client.exchange(address, packet, timeout=5.0))
    finally:
        await client.close()


async def test_a_peer_of_the_cluster_exchanges_through_the_front(front: Front, pki: Pki) -> None:
    packet = bytes(range(256)) * 8192  # 2 MiB: several frames each way through the pipe
    assert await exchange(front.address, channel_credentials(pki.ours("peer-1")), packet) == packet
    assert front.front.accepted == 1 and front.front.refused == 0


def bad_credentials(pki: Pki) -> dict[str, grpc.ChannelCredentials | None]:
    c, o = pki.cluster, pki.other
    return {
        # Its own CA does not know ours: the caller drops the handshake as soon as it sees our certificate.
        "tls_aborted": channel_credentials(identity(o / "ca.pem", o / "intruder.pem", o / "intruder.key")),
        # Trusts our CA but shows a certificate from another: our side refuses it.
        "tls_unknown_ca": channel_credentials(identity(c / "ca.pem", o / "intruder.pem", o / "intruder.key")),
        "tls_no_certificate": grpc.ssl_channel_credentials(root_certificates=(c / "ca.pem").read_bytes()),
        "tls_expired": channel_credentials(identity(c / "ca.pem", c / "expired.pem", c / "expired.key")),
        "tls_not_tls": None,  # a plaintext gRPC client
    }


@pytest.mark.parametrize("reason", ["tls_aborted", "tls_unknown_ca", "tls_no_certificate", "tls_expired",
                                    "tls_not_tls"])
async def test_a_caller_without_a_valid_certificate_is_refused_and_reported(front: Front, pki: Pki,
                                                                           reason: str) -> None:
    with pytest.raises(ExchangeRefused) as refused:
        await exchange(front.address, bad_credentials(pki)[reason])
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    first = await front.next_refusal()
    assert first.reason == reason, first.message
    assert first.message.startswith("TLS handshake from 127.0.0.1:")  # the source address is in the log line
    assert front.front.accepted == 0


async def test_a_bare_tcp_probe_is_not_counted_as_an_attempt(front: Front, pki: Pki) -> None:
    host, port = front.address.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()
    # A plaintext caller after the probe: its refusal must be the first one counted.
    with pytest.raises(ExchangeRefused):
        await exchange(front.address, None)
    assert (await front.next_refusal()).reason == "tls_not_tls"


async def test_silent_callers_time_out_and_openssl_callers_of_another_ca_are_named(pki: Pki) -> None:
    refusals: asyncio.Queue[TlsRefused] = asyncio.Queue()
    tls_front = TlsFront(server_context(pki.ours("peer-0")), on_refused=refusals.put_nowait, handshake_timeout=0.5)
    port = await tls_front.bind("127.0.0.1", 0)
    tls_front.start()
    try:
        _, silent = await asyncio.open_connection("127.0.0.1", port)  # connects, never speaks
        assert (await asyncio.wait_for(refusals.get(), REFUSAL_DEADLINE_S)).reason == "tls_timeout"
        silent.close()
        # A blocking OpenSSL client (unlike gRPC's, or asyncio's) sends the alert that says
        # why it gives up: unknown_ca.
        stranger = ssl.create_default_context(cafile=pki.other / "ca.pem")
        stranger.load_cert_chain(pki.other / "intruder.pem", pki.other / "intruder.key")
        stranger.check_hostname = False

        def handshake() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                stranger.wrap_socket(raw).close()

        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(handshake)
        assert (await asyncio.wait_for(refusals.get(), REFUSAL_DEADLINE_S)).reason == "tls_unknown_ca"
    finally:
        await tls_front.close()


async def test_the_grpc_server_is_reachable_only_through_a_private_directory(front: Front) -> None:
    directory = front.front.backend_path.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(front.front.backend_path.stat().st_mode)
    await front.front.close()
    assert not directory.exists()


# --- real peer processes ------------------------------------------------------------------------

def rejected(peer: PeerProcess, reason: str) -> int:
    with peer.admin() as admin:
        return int(admin.metrics().samples.get(f"hearsay_rejected_packets_total{{reason={reason}}}", 0))


def test_intruders_cannot_join_or_exchange_and_the_cluster_learns_as_without_tls(launch, pki: Pki,
                                                                                  tmp_path: Path) -> None:
    cluster = pki.cluster
    honest = launch(PEERS, lambda i, seeds: [*peer_args(i, seeds), *tls_args(cluster, f"peer-{i}")])
    seeds = ",".join(p.gossip_address for p in honest)
    o = pki.other
    ports = free_ports(4)
    intruder_args = [*COMMON_PEER_ARGS, "--seeds", seeds, "--shard-count", str(PEERS), "--max-steps", "50",
                     "--steps-per-second", "20", "--gossip-interval", "0.4"]
    intruders = [
        PeerProcess("intruder-ca", ports[0], ports[1],
                    [*intruder_args, "--tls-ca", str(o / "ca.pem"), "--tls-cert", str(o / "intruder.pem"),
                     "--tls-key", str(o / "intruder.key"), "--require-tls"], tmp_path / "intruder-ca.log"),
        PeerProcess("intruder-plain", ports[2], ports[3], intruder_args, tmp_path / "intruder-plain.log"),
    ]
    try:
        for p in intruders:
            p.start()
        for p in intruders:
            p.wait_ready(90)

        def every_intruder_refused() -> bool:
            return all(rejected(p, "tls_aborted") > 0 and rejected(p, "tls_not_tls") > 0 for p in honest)

        wait_for(every_intruder_refused, timeout=60, what="every honest peer to report both intruders")
        wait_for(lambda: all(p.status().training_done for p in honest), timeout=120, what="training to finish")
        wait_for(lambda: merged_from_both_others(honest), timeout=60, what="every peer to merge both others")

        intruder_addresses = {p.gossip_address for p in intruders}
        honest_ids = {p.peer_id for p in honest}
        for p in honest:
            with p.admin() as admin:
                members = admin.list_peers().peers
            assert not {m.address for m in members} & intruder_addresses, p.peer_id
            assert {m.peer_id for m in members if m.merges > 0} <= honest_ids, p.peer_id
            assert p.status().rejected >= 2
        for p in intruders:
            status = p.status()
            assert (status.exchanges, status.merges, status.bytes_received) == (0, 0, 0), p.peer_id
            assert p.alive()

        for i, p in enumerate(honest):  # the learning criterion of the plaintext test
            status = p.status()
            alone = build_trainer(PeerConfig(shard_index=i, seed=i, steps_per_second=0, **SPLIT))
            alone.train_steps(STEPS)
            alone_accuracy = alone.evaluate()
            print(f"{p.peer_id}: gossip over mutual TLS {status.accuracy:.3f} ({status.merges} merges, "
                  f"{status.rejected} refused) vs alone {alone_accuracy:.3f}")
            assert status.steps == STEPS and status.merges >= 2
            assert status.accuracy > alone_accuracy + 0.05
    finally:
        stop_peers(intruders)
