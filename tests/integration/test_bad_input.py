"""Hostile bytes sent to a running peer: each gets a clear gRPC status; the peer and its model survive."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc
from peer.models import build_model
from peer.procs import wait_for
from protocol import codecs
from protocol.wire import PacketHeader, encode_packet, fingerprint, specs_of


def digits_model_state(name: str, seed: int = 99) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in build_model(name, (1, 8, 8), 10).state_dict().items()}


def packet(state: dict[str, np.ndarray]) -> bytes:
    header = PacketHeader(sender_id="tester", sender_addr="127.0.0.1:9", fingerprint=fingerprint(specs_of(state)),
                          model_version=1, age=1, samples=100)
    return encode_packet(header, state, lambda _n, x: codecs.get("fp32" if x.dtype.kind == "f" else "raw"))


def send(address: str, frames: list[gossip_pb2.Frame]) -> list[gossip_pb2.Frame]:
    with grpc.insecure_channel(address) as channel:
        return list(gossip_pb2_grpc.GossipStub(channel).Exchange(iter(frames), timeout=10))


@pytest.fixture
def idle_peer(launch):
    """A peer with no partners whose training has finished, so only an accepted packet can change its model."""
    (peer,) = launch(1, lambda i, seeds: ["--max-steps", "30", "--steps-per-second", "0", "--seed", "1"])
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
