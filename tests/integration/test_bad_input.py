"""Hostile bytes sent to a running peer: each gets a clear gRPC status; the peer and its model survive."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import grpc
import numpy as np
import pytest
import torch

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc, membership_pb2, membership_pb2_grpc
from peer.models import build_model
from peer.tools.procs import PeerProcess, wait_for
from peer.transport.frames import PACKET_BYTES_KEY
from protocol import codecs
from protocol.wire import FRAME_BYTES, PacketHeader, encode_packet, fingerprint, specs_of

IDLE_TIMEOUT = 2.0  # the peer's stream_idle_timeout: a stalled stream ends after this


def digits_model_state(name: str, seed: int = 99) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in build_model(name, (1, 8, 8), 10).state_dict().items()}


def packet(state: dict[str, np.ndarray], **header_fields: int) -> bytes:
    fields = {"model_version": 1, "age": 1, "samples": 100, **header_fields}
    header = PacketHeader(sender_id="tester", sender_addr="127.0.0.1:9", fingerprint=fingerprint(specs_of(state)),
                          **fields)
    return encode_packet(header, state, lambda _n, x: codecs.get("fp32" if x.dtype.kind == "f" else "raw"))


def send(address: str, frames: Iterable[gossip_pb2.Frame], declared: int | None = None) -> list[gossip_pb2.Frame]:
    """One Exchange call; ``declared`` puts a packet size in the metadata, as GossipClient does."""
    metadata = ((PACKET_BYTES_KEY, str(declared)),) if declared is not None else None
    with grpc.insecure_channel(address) as channel:
        return list(gossip_pb2_grpc.GossipStub(channel).Exchange(iter(frames), timeout=10, metadata=metadata))


def rejected(peer: PeerProcess, reason: str) -> int:
    """How many packets ``peer`` counted as refused for ``reason`` (its Prometheus counter)."""
    with peer.admin() as admin:
        return int(admin.metrics().samples.get(f"hearsay_rejected_packets_total{{reason={reason}}}", 0))


@pytest.fixture
def idle_peer(launch):
    """A peer with no partners whose training has finished, so only an accepted packet can change its model.

    It starts no exchange of its own during a test (gossip every hour): an accepted packet makes
    its claimed sender a member, and the peer's own exchange with that (fake) address held the
    link, so a replay sent meanwhile was refused as "already in progress" (seen in CI)."""
    (peer,) = launch(1, lambda i, seeds: ["--max-steps", "30", "--steps-per-second", "0", "--seed", "1",
                                          "--stream-idle-timeout", str(IDLE_TIMEOUT), "--gossip-interval", "3600"])
    wait_for(lambda: peer.status().training_done, timeout=60, what="training to finish")
    return peer


def test_bad_packets_get_clear_statuses_and_leave_the_model_untouched(idle_peer) -> None:
    before = idle_peer.status()
    good = digits_model_state("mlp")
    nan_state = {k: v.copy() for k, v in good.items()}
    next(v for v in nan_state.values() if v.dtype.kind == "f")[0] = np.nan
    full = packet(good)
    cases = {
        "garbage": ([gossip_pb2.Frame(data=b"\xc1not msgpack at all" * 50, end=True)],
                    grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        "truncated": ([gossip_pb2.Frame(data=full[: len(full) // 2], end=True)],
                      grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        "no end frame": ([gossip_pb2.Frame(data=full[:100])], grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        "wrong fingerprint": ([gossip_pb2.Frame(data=packet(digits_model_state("cnn")), end=True)],
                              grpc.StatusCode.FAILED_PRECONDITION, "fingerprint"),
        "NaN": ([gossip_pb2.Frame(data=packet(nan_state), end=True)],
                grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
    }
    for name, (frames, code, reason) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            send(idle_peer.gossip_address, frames)
        assert err.value.code() == code, f"{name}: {err.value.code()} {err.value.details()}"
        assert reason in err.value.details(), f"{name}: {err.value.details()}"
        assert idle_peer.alive(), f"peer died on {name}"
        after = idle_peer.status()
        assert after.model_digest == before.model_digest, f"model changed on {name}"
        assert after.merges == before.merges
    assert idle_peer.status().rejected == before.rejected + len(cases)

    # The same peer does accept a valid packet, so an unchanged digest above means something.
    reply = send(idle_peer.gossip_address, [gossip_pb2.Frame(data=full, end=True)])
    assert reply and reply[-1].end
    after = idle_peer.status()
    assert after.merges == before.merges + 1 and after.model_digest != before.model_digest


def stalled_frames(first: gossip_pb2.Frame, release: threading.Event) -> Iterator[gossip_pb2.Frame]:
    """One frame, then nothing until ``release`` (set once the call has ended)."""
    yield first
    release.wait(60)


def test_sizes_and_stalls_are_refused_with_a_counted_reason_and_the_model_untouched(idle_peer) -> None:
    before = idle_peer.status()
    full = packet(digits_model_state("mlp"))
    half = len(full) // 2
    cases = {
        # declared size vs limit: refused before a byte is read
        "declared over the limit": ([gossip_pb2.Frame(data=full[:100])], 300 << 20,
                                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
        # declared size vs what arrived
        "more than declared": ([gossip_pb2.Frame(data=full[:half]), gossip_pb2.Frame(data=full[half:], end=True)],
                               half, grpc.StatusCode.INVALID_ARGUMENT, "size"),
        "fewer than declared": ([gossip_pb2.Frame(data=full, end=True)], len(full) + 1,
                                grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        "declaration not a number": ([gossip_pb2.Frame(data=full, end=True)], "12x",
                                     grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        # a frame over 1 MiB (but under gRPC's message limit) is refused by read_packet
        "frame over 1 MiB": ([gossip_pb2.Frame(data=bytes(FRAME_BYTES + 1), end=True)], None,
                             grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    }
    for name, (frames, declared, code, reason) in cases.items():
        counted = rejected(idle_peer, reason)
        with pytest.raises(grpc.RpcError) as err:
            send(idle_peer.gossip_address, frames, declared)  # type: ignore[arg-type]
        assert err.value.code() == code, f"{name}: {err.value.code()} {err.value.details()}"
        assert f"({reason})" in err.value.details(), f"{name}: {err.value.details()}"
        assert rejected(idle_peer, reason) == counted + 1, name
        after = idle_peer.status()
        assert after.model_digest == before.model_digest and after.merges == before.merges, name

    # A stream that sends part of a packet and then nothing ends after the idle timeout.
    release = threading.Event()
    try:
        with pytest.raises(grpc.RpcError) as err:
            send(idle_peer.gossip_address, stalled_frames(gossip_pb2.Frame(data=full[:half]), release), len(full))
    finally:
        release.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "(stalled)" in err.value.details()
    assert rejected(idle_peer, "stalled") == 1

    # Messages over gRPC's limit are refused by gRPC itself from their length prefix, before
    # they are buffered: a gossip frame, and a membership message on the same port.
    with pytest.raises(grpc.RpcError) as err:
        send(idle_peer.gossip_address, [gossip_pb2.Frame(data=bytes(5 << 20), end=True)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(idle_peer.gossip_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            membership_pb2_grpc.MembershipStub(channel).Ping(membership_pb2.Packet(data=bytes(5 << 20)), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A membership message that decodes to nothing is refused and counted like a packet.
    with grpc.insecure_channel(idle_peer.gossip_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            membership_pb2_grpc.MembershipStub(channel).Ping(membership_pb2.Packet(data=b"\xc1garbage"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected(idle_peer, "membership") == 1
    assert idle_peer.alive()
    after = idle_peer.status()
    assert after.model_digest == before.model_digest and after.merges == before.merges


def test_replayed_and_stale_packets_are_refused_without_touching_the_model(idle_peer) -> None:
    state = digits_model_state("mlp")
    epoch = 0x5EED
    first = packet(state, link_epoch=epoch, link_seq=0, model_version=7)
    reply = send(idle_peer.gossip_address, [gossip_pb2.Frame(data=first, end=True)], len(first))
    assert reply and reply[-1].end
    accepted = idle_peer.status()
    cases = {
        "replayed": (first, grpc.StatusCode.ALREADY_EXISTS),
        "stale": (packet(state, link_epoch=epoch, link_seq=1, model_version=6), grpc.StatusCode.FAILED_PRECONDITION),
    }
    for reason, (data, code) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            send(idle_peer.gossip_address, [gossip_pb2.Frame(data=data, end=True)], len(data))
        assert err.value.code() == code, f"{reason}: {err.value.code()} {err.value.details()}"
        assert f"({reason})" in err.value.details()
        assert rejected(idle_peer, reason) == 1
        after = idle_peer.status()
        assert after.model_digest == accepted.model_digest and after.merges == accepted.merges, reason
        assert after.exchanges == accepted.exchanges, reason  # no reply sent, the link did not move

    # The sender restarted: a new link epoch is heard even though its versions start over.
    restarted = packet(state, link_epoch=epoch + 1, link_seq=0, model_version=0)
    assert send(idle_peer.gossip_address, [gossip_pb2.Frame(data=restarted, end=True)], len(restarted))
    assert idle_peer.status().merges == accepted.merges + 1
