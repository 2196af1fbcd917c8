"""Issue 14, items 5-8, against real peers on loopback with hand-made callers: a stranger
cannot frame an honest peer, take over a model, pin memory with replies nobody reads, or
exhaust descriptors with idle connections."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from peer.tools.procs import PeerProcess, wait_for
from peer.transport.grpc_transport import HANDSHAKE_TIMEOUT_MS
from protocol.keyring import Keyring
from tests.conftest import running_peers
from tests.integration.hostile import (distance, fetch_model, model_state, packet, relay_from, send,
                                       unread_exchanges)

QUIET = ["--seed", "1", "--max-steps", "30", "--steps-per-second", "0"]


def outliers(sender: str, count: int = 3) -> list[bytes]:
    """``count`` frames of a model scaled 100x (far outside any distance bound) claiming ``sender``."""
    far = model_state(scale=100.0)
    return [packet(far, sender, seq=seq) for seq in range(1, count + 1)]


def listed(peer) -> dict:  # noqa: ANN001 - a PeerProcess
    with peer.admin() as admin:
        return {p.address: p for p in admin.list_peers().peers}


def rejected(peer, reason: str) -> float:  # noqa: ANN001
    with peer.admin() as admin:
        return admin.metrics().samples.get(f"hearsay_rejected_packets_total{{reason={reason}}}", 0)


@pytest.fixture(scope="module")
def keyring_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerProcess]]:
    """Two peers of one cluster key, exchanging: shared by the tests whose strangers are refused
    unread (nothing they send reaches the peers' state). Keyring file formats: tests/protocol."""
    tmp = tmp_path_factory.mktemp("keyring-pair")
    keyring = tmp / "keyring"
    keyring.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    with running_peers(2, tmp / "logs", lambda i, seeds: [*QUIET, "--keyring", str(keyring), "--seeds", *seeds,
                                                          "--gossip-interval", "0.5"]) as peers:
        yield peers


def test_framing_a_stranger_without_the_cluster_key_is_refused_unread_and_b_stays_in_good_standing(
        keyring_pair: list[PeerProcess]) -> None:
    a, b = keyring_pair
    wait_for(lambda: listed(a).get(b.gossip_address) and listed(a)[b.gossip_address].exchanges >= 2, timeout=60,
             what="A and B exchanging")
    unauthenticated = rejected(a, "unauthenticated")
    stranger = Keyring((bytes(range(1, 33)),))
    for key in (None, stranger):  # no key, then a key of another cluster
        for frame in outliers(b.gossip_address):
            with pytest.raises(grpc.RpcError) as err:
                send(a.gossip_address, frame, key)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rejected(a, "unauthenticated") == unauthenticated + 6
    before = listed(a)[b.gossip_address].exchanges
    wait_for(lambda: listed(a)[b.gossip_address].exchanges >= before + 3, timeout=60, what="A and B still exchanging")
    entry = listed(a)[b.gossip_address]
    assert not entry.banned and entry.reputation > 0.5


def test_framing_without_tls_or_keyring_a_claim_from_another_host_is_refused(launch) -> None:
    (a,) = launch(1, lambda i, seeds: [*QUIET, "--merge", "bristle", "--gossip-interval", "600"])
    wait_for(lambda: a.status().training_done, timeout=60, what="training to finish")
    honest_b = "127.0.0.1:7999"  # B is on A's host; the stranger connects from 127.0.0.2
    with relay_from("127.0.0.2", a.gossip_address) as through:
        for frame in outliers(honest_b, 4):
            with pytest.raises(grpc.RpcError) as err:
                send(through, frame)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "impersonation" in err.value.details()
    assert rejected(a, "impersonation") == 4
    entry = listed(a).get(honest_b)
    assert entry is None or (not entry.banned and entry.reputation == 1.0)
    # The same outliers under the stranger's own host's address are judged, and banned, as its own
    # (one is enough: a model 100x out counts three outliers, protocol/reputation.py far_factor).
    for frame in outliers("127.0.0.2:7999", 1):
        with relay_from("127.0.0.2", a.gossip_address) as through:
            send(through, frame)
    assert listed(a)["127.0.0.2:7999"].banned


@pytest.mark.parametrize("merge, packets, bound", [
    # The bound: each fresh identity moves us at most (1 − β)/ramp = 1/4 (vc, bristle), and a
    # claimed count is capped at 2 × the median established claim (weighted: ≤ 2S·½/(S + 2S·½) = ½).
    ("bristle", 12, 1 - (3 / 4) ** 12),     # before: 99 % replaced after 12 packets
    ("vc", 3, 1 - (3 / 4) ** 3),            # the default; before: 87 % replaced
    ("weighted", 1, 0.5),                   # before: 100 % replaced by one claim of 2^64 − 1
])
def test_takeover_rotating_identities_claiming_huge_counts_move_the_model_by_at_most_the_bound(
        launch, merge: str, packets: int, bound: float) -> None:
    (a,) = launch(1, lambda i, seeds: [*QUIET, "--merge", merge, "--gossip-interval", "600"])
    wait_for(lambda: a.status().training_done, timeout=60, what="training to finish")
    template = model_state()
    before = fetch_model(a.gossip_address, template, port=1)
    untrained = model_state(seed=7)
    for i in range(packets):  # a new identity (port) each time, claiming 2^64 − 1 samples
        send(a.gossip_address, packet(untrained, f"127.0.0.1:{20000 + i}", samples=2**64 - 1, epoch=100 + i))
    after = fetch_model(a.gossip_address, template, port=2)
    target = {k: v for k, v in untrained.items() if k in before}
    moved = distance(after, before) / distance(target, before)
    assert moved <= bound + 1e-6, f"{merge}: moved {moved:.3f} of the way to the attacker's model (bound {bound:.3f})"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_replies_nobody_reads_are_bounded_and_dropped_at_their_deadline(launch) -> None:
    (a,) = launch(1, lambda i, seeds: [*QUIET, "--model", "cnn-wide", "--gossip-interval", "600"])
    wait_for(lambda: a.status().training_done, timeout=90, what="training to finish")
    pid = a.proc.pid
    request = packet(model_state("cnn-wide"), "127.0.0.1:9", samples=0, codec="randk")  # tiny; the reply is a model
    assert len(request) < 2048
    base = rss_mb(pid)
    sockets = unread_exchanges(a.gossip_address, request, streams=600, per_connection=30)
    try:
        peak, deadline = base, time.monotonic() + 20
        # Status answers throughout, within 3 s: a peer starved by the unread replies would answer
        # only once they are dropped at their deadline (the idle timeout and more). RSS stays bounded.
        while time.monotonic() < deadline:
            a.status(timeout=3.0)
            peak = max(peak, rss_mb(pid))
            time.sleep(0.5)
    finally:
        for s in sockets:
            s.close()
    assert peak - base < 64, f"RSS grew by {peak - base:.0f} MB under 600 unread replies"
    assert rejected(a, "reply_unread") + rejected(a, "overloaded") > 0


def closed_by_peer(sock) -> bool:  # noqa: ANN001 - a socket
    try:
        while sock.recv(1 << 16):  # whatever the server sent before closing (its HTTP/2 settings)
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_plaintext_connections_are_closed_and_descriptors_stay_bounded(launch) -> None:
    import socket

    (a,) = launch(1, lambda i, seeds: [*QUIET, "--gossip-interval", "600"])
    pid = a.proc.pid
    host, port = a.gossip_address.rsplit(":", 1)
    base = len(os.listdir(f"/proc/{pid}/fd"))
    silent = []
    try:
        for _ in range(1100):
            silent.append(socket.create_connection((host, int(port)), timeout=5))
        # The peer answers its admin API while they are held open: before gRPC drops them at
        # the handshake timeout (a peer starved by them would answer only after that). Not a
        # speed check: under load on 2 cores a status call has taken over a second.
        a.status(timeout=HANDSHAKE_TIMEOUT_MS / 1000 - 1.0)
        # gRPC closes each silent connection once the handshake timeout (5 s) passes...
        wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) < base + 50, timeout=30,
                 what="the silent connections to be closed")
        assert all(closed_by_peer(s) for s in silent)
        # ... and the peer counts each one as refused (peer/transport/connection_watch.py).
        wait_for(lambda: rejected(a, "silent_connection") >= len(silent), timeout=10,
                 what="the silent connections to be counted")
        assert rejected(a, "silent_connection") == len(silent)
    finally:
        for s in silent:
            s.close()


def test_framing_under_mutual_tls_a_member_claiming_another_members_address_is_refused(
        launch, tmp_path: Path) -> None:
    from peer.tools import certs
    from peer.transport import tls_identity
    from peer.transport.channels import TLS_CHANNEL_OPTIONS, channel_credentials
    from hearsay.v1 import gossip_pb2, gossip_pb2_grpc

    certs.make_certs(tmp_path / "pki", ["peer-0", "peer-1", "mallory"], ips=["127.0.0.1"])
    pki = tmp_path / "pki"

    def tls(name: str) -> list[str]:
        return ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / f"{name}.pem"),
                "--tls-key", str(pki / f"{name}.key")]

    a, b = launch(2, lambda i, seeds: [*QUIET, *tls(f"peer-{i}"), "--seeds", *seeds, "--gossip-interval", "0.5"])
    wait_for(lambda: listed(a).get(b.gossip_address) and listed(a)[b.gossip_address].exchanges >= 2, timeout=60,
             what="A and B exchanging")
    mallory = channel_credentials(tls_identity.load_identity(pki / "ca.pem", pki / "mallory.pem", pki / "mallory.key"))
    with grpc.secure_channel(a.gossip_address, mallory, options=TLS_CHANNEL_OPTIONS) as channel:
        stub = gossip_pb2_grpc.GossipStub(channel)
        for frame in outliers(b.gossip_address):  # a valid cluster certificate, someone else's address
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Exchange(iter([gossip_pb2.Frame(data=frame, end=True)]), timeout=10))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "impersonation" in err.value.details()
    assert rejected(a, "impersonation") == 3
    before = listed(a)[b.gossip_address].exchanges
    wait_for(lambda: listed(a)[b.gossip_address].exchanges >= before + 3, timeout=60, what="A and B still exchanging")
    assert not listed(a)[b.gossip_address].banned


def test_membership_messages_without_the_cluster_key_are_refused_unread(keyring_pair: list[PeerProcess]) -> None:
    from hearsay.v1 import membership_pb2, membership_pb2_grpc
    from protocol.membership import Ping
    from protocol.membership.wire import to_wire

    a, b = keyring_pair
    wait_for(lambda: listed(a).get(b.gossip_address) and listed(a)[b.gossip_address].state == "alive", timeout=60,
             what="SWIM with a keyring to see B alive")
    before = rejected(a, "membership")
    with grpc.insecure_channel(a.gossip_address) as channel:
        ping = membership_pb2.Packet(data=to_wire(Ping(seq=1, source=b.gossip_address, target=a.gossip_address)))
        with pytest.raises(grpc.RpcError) as err:
            membership_pb2_grpc.MembershipStub(channel).Ping(ping, timeout=5)
    assert "unauthenticated" in err.value.details()
    assert rejected(a, "membership") == before + 1
    assert listed(a)[b.gossip_address].state == "alive"
