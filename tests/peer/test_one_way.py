"""One-way exchanges: a push whose answer carries no model, with both ends' links consistent."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.errors import MalformedPacket
from protocol.wire import decode_packet, encode_no_model
from tests.peer.test_gossip_links import engine, route


@pytest.fixture
def pair():
    a, b = engine("a:1", 1), engine("b:1", 2)
    a.membership.add_seed("b:1")
    b.membership.add_seed("a:1")
    return a, b


def recording(exchange, replies: list[bytes]):
    async def wrapped(address, packet, budget):
        reply = bytearray().join(await exchange(address, packet, budget))  # as the transport hands it over
        replies.append(bytes(reply))
        return reply
    return wrapped


def assert_same(x: dict, y: dict) -> None:
    assert list(x) == list(y)
    for name in x:
        np.testing.assert_array_equal(x[name], y[name])


def copies(replica) -> dict:
    return {k: np.array(v, copy=True) for k, v in replica.items()}


async def test_a_one_way_answer_carries_no_model_and_both_links_stay_consistent(pair) -> None:
    a, b = pair
    replies: list[bytes] = []
    to_b, to_a = recording(route(a, b), replies), route(a, b)
    assert await a.exchange_with(a.membership.get("b:1"), to_b)  # both ways: keyframes on both links
    b_to_a_sent, b_to_a_held = copies(b.sender.replica("a:1")), copies(a.receiver.replica("b:1"))
    a_merges, b_merges = a.stats.merges, b.stats.merges

    for _ in range(3):
        a.trainer.train_steps(2)
        b.trainer.train_steps(2)
        assert await a.exchange_with(a.membership.get("b:1"), to_b, one_way=True)
        answer = decode_packet(replies[-1], expected=a.specs)
        assert not answer.header.carries_model and answer.tensors == {}
        assert len(replies[-1]) < 1024 < a.dense_bytes  # the header alone, not a model
        # a's update reached b; the link from b to a did not move on either end.
        assert_same(a.sender.replica("b:1"), b.receiver.replica("a:1"))
        assert_same(b.sender.replica("a:1"), b_to_a_sent)
        assert_same(a.receiver.replica("b:1"), b_to_a_held)
    assert b.stats.merges == b_merges + 3 and a.stats.merges == a_merges  # b took a's model, a took none
    assert a.stats.exchanges_out == 4  # a push is an exchange this peer started
    assert a.link("b:1").bytes_received == len(replies[0]) + sum(len(r) for r in replies[1:])

    # The next exchanges both ways are deltas that decode on either end: no keyframe asked, none sent.
    b.trainer.train_steps(2)
    assert await b.exchange_with(b.membership.get("a:1"), to_a)
    assert await a.exchange_with(a.membership.get("b:1"), to_b)
    assert a.stats.keyframe_requests == {} and b.stats.keyframe_requests == {}
    assert a.stats.keyframes_sent == 1 and b.stats.keyframes_sent == 1
    assert_same(a.sender.replica("b:1"), b.receiver.replica("a:1"))
    assert_same(b.sender.replica("a:1"), a.receiver.replica("b:1"))


async def test_a_one_way_answer_still_asks_for_a_keyframe(pair) -> None:
    a, b = pair
    exchange = route(a, b)
    member = a.membership.get("b:1")
    assert await a.exchange_with(member, exchange)
    b.receiver.forget("a:1")  # b restarted or evicted the link: a's next delta does not fit
    a.trainer.train_steps(2)
    merges = b.stats.merges
    assert not await a.exchange_with(member, exchange, one_way=True)  # not taken: a push to send again
    assert b.stats.keyframe_requests == {"unknown_link": 1} and b.stats.merges == merges
    assert a.link("b:1").failures == 0  # answered: not a failing partner
    assert await a.exchange_with(member, exchange, one_way=True)  # the answer asked for one: a keyframe
    assert a.stats.keyframes_sent == 2 and b.stats.merges == merges + 1
    assert_same(a.sender.replica("b:1"), b.receiver.replica("a:1"))


async def test_a_packet_without_a_model_cannot_open_an_exchange(pair) -> None:
    a, b = pair
    with pytest.raises(MalformedPacket):
        await b.handle_inbound(encode_no_model(a.header_for("b:1", None)), "in-process")
    assert b.stats.merges == 0 and b.receiver.replica("a:1") is None
