"""A keyframe is received into the room of the copy it replaces (peer/runtime/keyframe_room.py):
the copy is dropped once the packet's header is in, never held next to the whole keyframe;
and only when the connection proves the sender and the replay guard would take the keyframe."""

from __future__ import annotations

import mmap
from collections.abc import Callable
from functools import partial

import grpc
import numpy as np

from peer.runtime.gossip import GossipEngine
from peer.runtime.keyframe_room import make_room_for_reply, make_room_inbound
from peer.transport.grpc_transport import (
    GossipClient,
    GossipServicer,
    add_to_server,
    server_options,
)
from peer.transport.identity import Caller
from protocol.wire import Buffer, peek_header
from tests.exchange_peer import build_engine

LOCAL = Caller(connection="ipv4:127.0.0.1:40000", host="127.0.0.1")


def keyframe_head(sender: GossipEngine, link: str) -> bytes:
    """The first part of a fresh keyframe from ``sender`` on ``link`` (a new link epoch)."""
    sender.sender.invalidate(link)
    parts = sender.own_packet_parts(link, commit=False)
    sender.sender.discard(link)
    return bytes(parts[0])


async def linked() -> tuple[GossipEngine, GossipEngine]:
    """Engines a (127.0.0.1:1) and b (127.0.0.1:2); b holds a copy of a's model."""
    a, b = build_engine(16, 1, 1, "127.0.0.1:1"), build_engine(16, 1, 2, "127.0.0.1:2")
    packet = b"".join(bytes(p) for p in a.own_packet_parts(b.address, commit=True))
    await b.handle_inbound(packet, LOCAL)
    assert b.receiver.replica(a.address) is not None
    return a, b


async def test_a_proven_keyframe_head_drops_the_copy_it_replaces() -> None:
    a, b = await linked()
    head = keyframe_head(a, b.address)
    header = peek_header(head)
    assert header is not None and header.keyframe and header.sender_addr == a.address
    make_room_inbound(b, head, LOCAL)
    assert b.receiver.replica(a.address) is None


async def test_unproven_stale_or_delta_heads_keep_the_copy() -> None:
    a, b = await linked()
    head = keyframe_head(a, b.address)
    for caller in (Caller(connection="ipv4:10.9.9.9:1", host="10.9.9.9"),  # another host claims a's address
                   Caller(connection="ipv4:127.0.0.1:1", host="127.0.0.1", authenticated=True),  # keyed: tag unchecked yet
                   Caller(connection="ipv4:127.0.0.1:1", host="127.0.0.1", certificate="cert:x/00")):  # owns nothing
        make_room_inbound(b, head, caller)
        assert b.receiver.replica(a.address) is not None, caller
    make_room_inbound(b, head[:40], LOCAL)  # a head cut before the header ends
    assert b.receiver.replica(a.address) is not None


async def test_a_replayed_keyframe_head_keeps_the_copy() -> None:
    a, b = build_engine(16, 1, 1, "127.0.0.1:1"), build_engine(16, 1, 2, "127.0.0.1:2")
    packet = b"".join(bytes(p) for p in a.own_packet_parts(b.address, commit=True))
    await b.handle_inbound(packet, LOCAL)
    make_room_inbound(b, packet[:4096], LOCAL)  # the same keyframe again: the replay guard refuses it
    assert b.receiver.replica(a.address) is not None


async def test_keyframes_over_grpc_never_meet_the_copy_they_replace() -> None:
    """Both directions of a push-pull of keyframes on an existing link, on real gRPC: each side's
    copy of the other is gone by the time the whole keyframe is in, and back after the exchange."""
    server = grpc.aio.server(options=server_options())
    port = server.add_insecure_port("127.0.0.1:0")
    a = build_engine(64, 2, 1, "127.0.0.1:1")
    b = build_engine(64, 2, 2, f"127.0.0.1:{port}")
    copies_when_read: list[bool] = []  # (views of a copy held here would keep its buffer)

    async def handle(data: memoryview, caller: Caller) -> list[Buffer]:
        copies_when_read.append(b.receiver.replica(a.address) is not None)  # the whole packet is in by now
        return await b.handle_inbound(data, caller)

    rooms: list[tuple[str, object]] = []  # what each hook handed the reassembly

    def recorded(side: str, hook: Callable[..., mmap.mmap | None]) -> Callable[..., mmap.mmap | None]:
        def run(*args: object) -> mmap.mmap | None:
            room = hook(*args)
            rooms.append((side, room))
            return room
        return run

    add_to_server(GossipServicer(handle, 1 << 28, b.count_rejected,
                                 on_head=recorded("b", partial(make_room_inbound, b))), server)
    await server.start()
    client = GossipClient(1 << 28)
    client.on_reply_head = recorded("a", partial(make_room_for_reply, a))
    ours_when_read: list[bool] = []

    async def exchange(address: str, packet: Buffer, timeout: float) -> memoryview:
        reply = await client.exchange(address, packet, timeout)
        ours_when_read.append(a.receiver.replica(address) is not None)
        return reply

    try:
        a.membership.add_seed(b.address)
        member = a.membership.get(b.address)
        assert await a.exchange_with(member, exchange)  # makes the link: keyframes, no copies yet
        assert await a.exchange_with(member, exchange)  # a delta each way: copies kept
        assert copies_when_read[-1] and ours_when_read[-1]
        a.sender.invalidate(b.address)
        a._want_keyframe.add(b.address)  # b answers with a keyframe too
        del rooms[:]
        assert await a.exchange_with(member, exchange)
        assert not copies_when_read[-1] and not ours_when_read[-1]
        # Nothing else viewed the old copies: each keyframe was reassembled into its copy's buffer.
        assert [side for side, room in rooms if isinstance(room, mmap.mmap)] == ["b", "a"]
        assert b.receiver.replica(a.address) is not None and a.receiver.replica(b.address) is not None
        assert await a.exchange_with(member, exchange)  # and the link goes on with deltas
        assert copies_when_read[-1] and ours_when_read[-1]
        # A view of b's copy still held (as a batch merge would hold it): b's keyframe goes into
        # fresh memory, and the bytes that view sees are left alone.
        held = b.receiver.replica(a.address)
        assert held is not None
        before = {name: x.copy() for name, x in held.items()}
        a.sender.invalidate(b.address)
        a._want_keyframe.add(b.address)
        del rooms[:]
        assert await a.exchange_with(member, exchange)
        assert [side for side, room in rooms if isinstance(room, mmap.mmap)] == ["a"]
        assert all(np.array_equal(held[name], x) for name, x in before.items())
        assert a.stats.keyframes_sent == 3 and b.stats.keyframes_sent == 3
    finally:
        await client.close()
        await server.stop(None)
