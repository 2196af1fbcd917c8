"""The answering peer streams its reply while the request arrives (peer/transport/answering.py,
peer/runtime/inbound.py), on real gRPC servers on loopback: never more reply bytes than request
bytes until the request is taken, never the reply's last frame for a request it refuses, our
model and links untouched by a refused request, and the early privilege lost by a connection
that wasted one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import grpc
import numpy as np
import pytest

from peer.runtime.gossip import GossipEngine
from peer.runtime.keyframe_room import make_room_for_reply, make_room_inbound
from peer.transport.admission import AdmissionLimits, Gate
from peer.transport.frames import PACKET_BYTES_KEY, RawFrame, parse_frame, serialize_frame, to_raw_frames
from peer.transport.identity import Caller
from peer.transport.grpc_transport import EXCHANGE_METHOD, GossipClient, GossipServicer, add_to_server, server_options
from protocol.wire import Buffer, packet_size
from tests.exchange_peer import build_engine

pytestmark = pytest.mark.usefixtures("one_thread")

# About 2.2M parameters: a keyframe is 9 frames of 1 MiB, so a reply has frames to run ahead with.
HIDDEN, LAYERS = 1000, 2


class Pair:
    """Engine a calls engine b, which answers behind a real servicer (as peer.runtime.node wires it)."""

    def __init__(self, idle_timeout: float = 5.0) -> None:
        self.idle_timeout = idle_timeout

    async def __aenter__(self) -> Pair:
        self.server = grpc.aio.server(options=server_options())
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.b: GossipEngine = build_engine(HIDDEN, LAYERS, 2, f"127.0.0.1:{port}")
        self.a: GossipEngine = build_engine(HIDDEN, LAYERS, 1, "127.0.0.1:1")
        self.servicer = GossipServicer(self.b, 1 << 30, self.b.count_rejected,
                                       Gate(AdmissionLimits(idle_timeout=self.idle_timeout)),
                                       on_head=partial(make_room_inbound, self.b),
                                       on_answered_early=self.b.count_answered_early)
        self.servicer.early = "always"  # on loopback too (by default only a caller across a link is)
        add_to_server(self.servicer, self.server)
        await self.server.start()
        self.a.membership.add_seed(self.b.address)
        self.client = GossipClient(1 << 30)
        self.client.on_reply_head = partial(make_room_for_reply, self.a)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.stop(None)

    async def settled(self) -> None:
        """b merges after its reply has gone: wait until it has."""
        async with asyncio.timeout(30):
            while self.b.in_flight:
                await asyncio.sleep(0.005)

    async def exchange(self) -> bool:
        merged = await self.a.exchange_with(self.a.membership.get(self.b.address), self.client.exchange)
        await self.settled()
        return merged

    def keyframe(self) -> list[Buffer]:
        """A fresh, valid keyframe from a to b (not committed on a's side)."""
        self.a.sender.invalidate(self.b.address)
        parts = self.a.own_packet_parts(self.b.address, commit=False)
        self.a.sender.discard(self.b.address)
        return parts

    async def raw_call(self, frames: list[RawFrame], declared: int, hold: asyncio.Event) -> tuple[int, bool, str]:
        """Send ``frames`` on a's own (trusted) connection to b, then wait for ``hold`` before
        ending the stream; read the reply meanwhile. (reply bytes, whether its end frame came,
        the status the call ended with)."""
        channel = self.client._pool.get(self.b.address)
        method = channel.stream_stream(EXCHANGE_METHOD, request_serializer=serialize_frame,
                                       response_deserializer=parse_frame)

        async def request() -> AsyncIterator[RawFrame]:
            for frame in frames:
                yield frame
            await hold.wait()

        call = method(request(), metadata=((PACKET_BYTES_KEY, str(declared)),))
        got, ended = 0, False
        try:
            async for frame in call:
                got += frame.data.nbytes if isinstance(frame.data, memoryview) else len(frame.data)
                ended = ended or frame.end
        except grpc.aio.AioRpcError as e:
            return got, ended, e.code().name
        return got, ended, "OK"


async def test_a_stalled_request_gets_no_more_reply_bytes_than_it_sent_and_costs_its_connection_the_privilege() -> None:
    async with Pair(idle_timeout=1.0) as p:
        assert await p.exchange()  # the first exchange on a connection earns it trust: answered whole
        assert p.servicer.answered_early == 0
        assert await p.exchange()  # now answered while it arrives
        assert p.servicer.answered_early == 1 and p.servicer.early_reply_bytes > 0
        # What Status and the metrics show (peer.ops): the engine's count, through the servicer's hook.
        assert (p.b.stats.answered_early, p.b.stats.early_reply_bytes) == (1, p.servicer.early_reply_bytes)
        b_model, b_links = p.b.trainer.digest(), p.b.sender.replica(p.a.address)
        b_epoch = p.b.sender._links.peek(p.a.address).epoch

        frames = list(to_raw_frames(p.keyframe()))
        assert len(frames) >= 6
        sent = frames[:3]  # the head and two more frames of a valid keyframe, then silence
        sent_bytes = sum(f.data.nbytes if isinstance(f.data, memoryview) else len(f.data) for f in sent)
        got, ended, status = await p.raw_call(sent, packet_size(p.keyframe()), asyncio.Event())
        await p.settled()
        assert status == "DEADLINE_EXCEEDED"  # stalled: b ended it
        assert 0 < got <= sent_bytes and not ended  # it answered early, never ahead, never whole
        assert p.b.trainer.digest() == b_model  # nothing merged
        # b's reply was dropped: what b believes a holds of its model is as it was.
        assert p.b.sender._links.peek(p.a.address).epoch == b_epoch
        assert all(np.array_equal(x, b_links[k]) for k, x in p.b.sender.replica(p.a.address).items())
        assert p.b.stats.rejected_by_reason.get("stalled", 0) == 1

        # The connection lost its trust: its next exchange is answered whole, the one after early again.
        assert await p.exchange()
        assert p.servicer.answered_early == 1
        assert await p.exchange()
        assert p.servicer.answered_early == 2 == p.b.stats.answered_early


async def test_a_request_whose_body_fails_is_refused_and_its_caller_never_gets_the_whole_reply() -> None:
    async with Pair() as p:
        assert await p.exchange() and await p.exchange()
        assert p.servicer.answered_early == 1
        b_model = p.b.trainer.digest()
        packet = bytearray(b"".join(bytes(x) for x in p.keyframe()))
        packet[-4 * 1000:] = np.full(1000, np.nan, dtype=np.float32).tobytes()  # a valid head, a poisoned body
        frames = list(to_raw_frames(bytes(packet)))
        hold = asyncio.Event()
        hold.set()
        got, ended, status = await p.raw_call(frames, len(packet), hold)
        await p.settled()
        assert status == "INVALID_ARGUMENT" and not ended  # refused; the reply's last frame never came
        assert got > 0  # (it had been answering while the request arrived)
        assert p.b.trainer.digest() == b_model
        assert p.b.stats.rejected == 1
        # The link still works: a's next exchanges are taken (the first restarts with keyframes).
        assert await p.exchange() and await p.exchange()
        assert p.b.trainer.digest() != b_model


async def test_by_default_only_a_caller_on_another_machine_is_answered_early() -> None:
    async with Pair() as p:
        p.servicer.early = "remote"  # the daemon's default
        assert await p.exchange() and await p.exchange() and await p.exchange()
        assert p.servicer.answered_early == 0  # a loopback caller shares our cores: answered whole
    servicer = p.servicer
    assert not servicer.answers_early(Caller(connection="ipv4:127.0.0.1:5", host="127.0.0.1"))
    assert not servicer.answers_early(Caller(connection="in-process"))
    assert servicer.answers_early(Caller(connection="ipv4:203.0.113.9:5", host="203.0.113.9"))  # not ours
    servicer.early = "never"
    assert not servicer.answers_early(Caller(connection="ipv4:203.0.113.9:5", host="203.0.113.9"))
