"""Issue 14, item 4: packets claiming ever new sender addresses grow nothing without bound.

The gossip engine's per-sender side tables (link statistics, reported telemetry) and
the SWIM table behind it, fed through the real inbound path (decode, newcomer answer).
"""

from __future__ import annotations

import random

import pytest

from peer.runtime.config import PeerConfig
from peer.runtime import gossip
from peer.runtime.gossip import GossipEngine
from tests.trainers import build_trainer
from peer.runtime.recent import RecentMap
from protocol import codecs
from protocol.membership import StaticMembership, Swim, SwimConfig
from protocol.merge import make_rule
from protocol.wire import Limits, PacketHeader, encode_packet, fingerprint, specs_of


def test_a_recent_map_keeps_the_most_recently_written_entries() -> None:
    m: RecentMap[str, int] = RecentMap(3)
    for i, k in enumerate("abcd"):
        m[k] = i
    assert list(m) == ["b", "c", "d"]
    m.setdefault("b", 99)  # touching an entry makes it the newest
    m["e"] = 5
    assert list(m) == ["d", "b", "e"] and m["b"] == 1
    with pytest.raises(ValueError):
        RecentMap(0)


async def test_newcomer_packets_from_ever_new_addresses_leave_bounded_tables(monkeypatch) -> None:  # noqa: ANN001
    bound = 16  # the tables' least size, shrunk from 1,024 so a few dozen packets overflow them
    monkeypatch.setattr(gossip, "SIDE_TABLE_MIN", bound)
    trainer = build_trainer(PeerConfig(seed=1, steps_per_second=0))
    swim = Swim("me:1", "me", rng=random.Random(0), config=SwimConfig())
    engine = GossipEngine(peer_id="me", address="me:1", trainer=trainer, membership=swim,  # type: ignore[arg-type]
                          merge_rule=make_rule("vc"), codec="fp32", limits=Limits(), rng=random.Random(0),
                          interval=1.0, timeout=5.0, max_links=1)
    state = trainer.state()
    senders = 3 * bound + 40
    for i in range(senders):
        address = f"10.68.{i >> 8}.{i & 255}:7070"
        header = PacketHeader(sender_id=f"n{i}", sender_addr=address, fingerprint=fingerprint(specs_of(state)),
                              model_version=0, age=0, samples=0, link_epoch=1, link_seq=1, keyframe=True)
        packet = encode_packet(header, state, lambda _n, x: codecs.get("fp32" if x.dtype.kind == "f" else "raw"))
        assert await engine.handle_inbound(packet, "test"), "a newcomer is answered with our model"
    assert len(engine.links) == bound and len(engine.reports) == bound
    assert f"10.68.{(senders - 1) >> 8}.{(senders - 1) & 255}:7070" in engine.links  # the newest are kept
    assert len(swim.members()) == swim.config.hearsay_quota
    assert swim.refused_hearsay == senders - swim.config.hearsay_quota


async def test_exchanges_claiming_ever_new_addresses_leave_no_link_lock_behind() -> None:
    """Every exchange holds its partner's link lock; the lock goes when the exchange ends,
    so a stranger that claims a new address per packet grows no table (issue 14)."""
    trainer = build_trainer(PeerConfig(seed=1, steps_per_second=0))
    engine = GossipEngine(peer_id="me", address="me:1", trainer=trainer, membership=StaticMembership("me:1"),
                          merge_rule=make_rule("vc"), codec="fp32", limits=Limits(), rng=random.Random(0),
                          interval=1.0, timeout=5.0, max_links=1)
    state = trainer.state()
    for i in range(40):
        header = PacketHeader(sender_id=f"n{i}", sender_addr=f"10.69.0.{i}:7070",
                              fingerprint=fingerprint(specs_of(state)), model_version=1, age=0, samples=10,
                              link_epoch=1, link_seq=1, keyframe=True)
        packet = encode_packet(header, state, lambda _n, x: codecs.get("fp32" if x.dtype.kind == "f" else "raw"))
        assert await engine.handle_inbound(packet, "test"), "an established sender is answered"
    assert engine.stats.merges == 40
    assert len(engine._link_locks) == 0
    async with engine._link_locks.hold("a:1"):  # held: busy, and the one entry there is
        assert engine._link_locks.locked("a:1") and len(engine._link_locks) == 1
    assert not engine._link_locks.locked("a:1") and len(engine._link_locks) == 0
