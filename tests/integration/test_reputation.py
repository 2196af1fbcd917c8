"""A real peer bans a sender whose models are outliers: its packets are then refused
(PERMISSION_DENIED, reason "banned"), and ListPeers and `hearsay peers` say why."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
import torch

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc
from peer.models import build_model
from peer.tools.procs import wait_for
from protocol import codecs
from protocol.wire import PacketHeader, encode_packet, fingerprint, specs_of

ATTACKER = "127.0.0.1:9"  # nobody listens there: the peer must not come to depend on it


def poisoned(seq: int) -> bytes:
    """A keyframe of a digits MLP scaled 100x (a sign-flip or noise attacker looks like this
    to a distance test), as frame ``seq`` of link epoch 1 from ``ATTACKER``."""
    torch.manual_seed(99)
    state = {k: v.numpy().copy() for k, v in build_model("mlp", (1, 8, 8), 10).state_dict().items()}
    state = {k: (100 * v).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in state.items()}
    header = PacketHeader(sender_id="attacker", sender_addr=ATTACKER, fingerprint=fingerprint(specs_of(state)),
                          model_version=seq, age=seq, samples=100, link_epoch=1, link_seq=seq, keyframe=True)
    return encode_packet(header, state, lambda _n, x: codecs.get("fp32" if x.dtype.kind == "f" else "raw"))


def send(address: str, data: bytes) -> list[gossip_pb2.Frame]:
    with grpc.insecure_channel(address) as channel:
        return list(gossip_pb2_grpc.GossipStub(channel).Exchange(iter([gossip_pb2.Frame(data=data, end=True)]),
                                                                 timeout=10))


def test_a_peer_sending_outliers_is_banned_and_listed_with_the_reason(launch) -> None:
    # One robust peer that starts no exchange of its own during the test (interval 600 s).
    (peer,) = launch(1, lambda i, seeds: ["--merge", "bristle", "--membership", "static", "--seed", "1",
                                          "--max-steps", "30", "--steps-per-second", "0",
                                          "--gossip-interval", "600"])
    wait_for(lambda: peer.status().training_done, timeout=60, what="training to finish")
    digest = peer.status().model_digest  # from now on only a merge can change the model
    # One outlier far beyond the bound (a 100x model: distance ~950 against a bound of ~15) counts
    # three (protocol/reputation.py, far_factor): score 1 − 3·0.5 = −0.5 < −0.25 at once.
    assert send(peer.gossip_address, poisoned(1)), "an outlier is still answered (push-pull), not merged"
    with pytest.raises(grpc.RpcError) as err:
        send(peer.gossip_address, poisoned(2))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "banned" in err.value.details()

    status = peer.status()
    assert status.model_digest == digest  # every outlier was left out: nothing of the attacker's got in
    with peer.admin() as admin:
        listed = {p.address: p for p in admin.list_peers().peers}
        rejected = admin.metrics().samples.get("hearsay_rejected_packets_total{reason=banned}", 0)
    attacker = listed[ATTACKER]
    assert attacker.banned and attacker.reputation < -0.25
    assert attacker.reputation_reason.startswith("banned") and "1 outlier" in attacker.reputation_reason
    assert "distance" in attacker.reputation_reason
    assert rejected == 1

    out = subprocess.run([sys.executable, "-m", "peer.tools.cli", "peers", "--admin", peer.admin_address],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0 and "BANNED" in out.stdout and "1 outlier" in out.stdout
