"""The simulator runs the code that ships: a scripted sequence of exchanges gives the same bytes
and the same models through two daemons' engines on real gRPC servers on loopback as through
the simulator's virtual peers (issue 11, item 0)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import grpc
import pytest

from peer.data import load_dataset
from peer.runtime.gossip import GossipEngine
from peer.runtime.inbound import InboundExchange
from peer.runtime.keyframe_room import make_room_for_reply, make_room_inbound
from peer.sim.swarm import SimConfig, Simulator, peer_seed
from peer.transport.errors import ExchangeRefused
from peer.transport.identity import Caller
from peer.transport.grpc_transport import GossipClient, GossipServicer, add_to_server, server_options
from protocol.membership import StaticMembership
from protocol.merge import make_rule
from protocol.wire import Buffer, Limits

CONFIG = SimConfig(peers=2, gossip_interval=1e9, batch_size=16, seed=5)  # no tick before the script ends
MAX_PACKET = 256 * 2**20
IDS = ("peer-a", "peer-b")

# One observation per line of the script: (what, packets sent in it (sha256), digests after it).
Observation = tuple[str, tuple[str, ...], tuple[str, str]]


pytestmark = pytest.mark.usefixtures("one_thread")


class Script:
    """The exchanges, in order, against ``exchange(i, j)``, ``replay(i, j)`` and the engines.

    1. a->b: both links start with a keyframe;   2. local steps, a->b: deltas;
    3. b->a: deltas the other way;                 4. a gap: a commits a frame b never gets,
       so b cannot apply the next one and asks for a keyframe (and does not merge);
    5. a->b: the keyframe, merged;                 6. a refusal: a's last packet replayed
       to b is refused as already taken (models untouched);
    7. a->b after the refusal: deltas again.
    """

    def __init__(self, engines: Sequence[GossipEngine], exchange: Callable[[int, int], Awaitable[bool]],
                 replay: Callable[[int, int, Buffer], Awaitable[None]], sent: list[bytes]) -> None:
        self.engines, self.exchange, self.replay, self.sent = engines, exchange, replay, sent
        self.seen: list[Observation] = []

    def note(self, what: str, start: int) -> None:
        packets = tuple(hashlib.sha256(p).hexdigest()[:16] for p in self.sent[start:])
        self.seen.append((what, packets, (self.engines[0].trainer.digest(), self.engines[1].trainer.digest())))

    async def run(self) -> list[Observation]:
        a, b = self.engines
        steps = [(3, 2), (1, 4), (2, 2), (0, 3), (2, 1), (0, 0), (3, 3)]
        for n, (what, (sa, sb)) in enumerate(zip(("keyframes", "deltas", "deltas back", "gap", "keyframe again",
                                                   "refused replay", "after refusal"), steps)):
            a.trainer.train_steps(sa)
            b.trainer.train_steps(sb)
            start = len(self.sent)
            if what == "deltas back":
                assert await self.exchange(1, 0)
            elif what == "gap":
                a.own_packet(b.address)  # a frame for b that never leaves a
                b_before, asked = b.trainer.digest(), sum(b.stats.keyframe_requests.values())
                assert await self.exchange(0, 1)  # a merges b's answer ...
                # ... but b cannot apply a's frame: it merges nothing and asks for a keyframe.
                assert b.trainer.digest() == b_before and sum(b.stats.keyframe_requests.values()) == asked + 1
            elif what == "keyframe again":
                keyframes = a.stats.keyframes_sent
                assert await self.exchange(0, 1)
                assert a.stats.keyframes_sent == keyframes + 1
            elif what == "refused replay":
                before = b.stats.rejected
                packet = self.sent[-2]  # a's last packet to b, sent again
                self.sent.append(packet)
                await self.replay(0, 1, packet)
                assert b.stats.rejected == before + 1 and b.stats.rejected_by_reason.get("replayed") == 1
            else:
                assert await self.exchange(0, 1)
            self.note(what, start)
            assert n == 0 or what == "refused replay" or self.seen[-1][2] != self.seen[-2][2]
        return self.seen


def recording(send: Callable[[str, Buffer | Sequence[Buffer], float], Awaitable[bytearray]], sent: list[bytes]):  # noqa: ANN201
    """``send``, keeping every packet it carries and every reply, in order."""
    async def exchange(address: str, packet: Buffer | Sequence[Buffer], timeout: float) -> bytearray:
        sent.append(b"".join(bytes(p) for p in ([packet] if isinstance(packet, (bytes, bytearray)) else packet)))
        reply = await send(address, packet, timeout)
        sent.append(bytes(reply))
        return reply
    return exchange


class LateEngine:
    """The engine ``handlers[i]`` once it exists (servers start first: engines need their ports),
    answering as ``peer.runtime.node`` has the engine answer: in steps, the reply streamed."""

    def __init__(self, handlers: list[GossipEngine], i: int) -> None:
        self.handlers, self.i = handlers, i

    def open_early(self, head: Buffer, caller: Caller) -> Awaitable[InboundExchange | None] | None:
        return self.handlers[self.i].open_early(head, caller)

    async def open_whole(self, packet: memoryview, caller: Caller) -> InboundExchange:
        return await self.handlers[self.i].open_whole(packet, caller)


async def through_grpc(sim_for_trainers: Simulator) -> tuple[list[Observation], list[str]]:
    """Two engines built as ``peer.runtime.node`` builds them (daemon defaults), on real gRPC servers."""
    servers, addresses, engines, servicers = [], [], [], []
    handlers: list[GossipEngine] = []
    for i in range(2):
        server = grpc.aio.server(options=server_options())
        servicer = GossipServicer(LateEngine(handlers, i), MAX_PACKET,
                                  lambda e, i=i: handlers[i].count_rejected(e),
                                  on_head=lambda head, caller, i=i: make_room_inbound(handlers[i], head, caller))
        servicer.early = "always"  # on loopback too (the daemon answers early across a link only)
        add_to_server(servicer, server)
        servicers.append(servicer)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    for i in range(2):
        membership = StaticMembership(addresses[i])
        membership.add_seed(addresses[1 - i])
        engines.append(GossipEngine(peer_id=IDS[i], address=addresses[i], trainer=sim_for_trainers.peers[i].trainer,
                                    membership=membership, merge_rule=make_rule(CONFIG.merge), codec=CONFIG.codec,
                                    limits=Limits(max_packet_bytes=MAX_PACKET), rng=random.Random(peer_seed(CONFIG, i)),
                                    interval=1.0, timeout=CONFIG.timeout))
    handlers.extend(engines)
    clients = [GossipClient(MAX_PACKET), GossipClient(MAX_PACKET)]
    for client, engine in zip(clients, engines):  # keyframes received into the room of the copy they replace
        client.on_reply_head = partial(make_room_for_reply, engine)
    sent: list[bytes] = []

    async def settled(j: int) -> None:
        """Wait until engine j has settled its side: it merges after its reply has gone."""
        async with asyncio.timeout(30):
            while engines[j].in_flight:
                await asyncio.sleep(0.005)

    async def exchange(i: int, j: int) -> bool:
        member = engines[i].membership.get(addresses[j])
        merged = await engines[i].exchange_with(member, recording(clients[i].exchange, sent))
        await settled(j)
        return merged

    async def replay(i: int, j: int, packet: Buffer) -> None:
        with pytest.raises(ExchangeRefused) as refused:
            await clients[i].exchange(addresses[j], packet, CONFIG.timeout)
        assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS
        await settled(j)

    try:
        seen = await Script(engines, exchange, replay, sent).run()
        # Every exchange but each connection's first was answered while its request arrived
        # (keyframes, deltas, a gap, a keyframe again), the reply's bytes never ahead of the request's.
        assert sum(s.answered_early for s in servicers) == 4
        assert sum(s.early_reply_bytes for s in servicers) > 0
        return seen, addresses
    finally:
        for c in clients:
            await c.close()
        for s in servers:
            await s.stop(None)


def through_simulator(addresses: list[str]) -> list[Observation]:
    sim = Simulator(CONFIG, load_dataset("digits"), identities=list(zip(IDS, addresses)))
    engines = [p.engine for p in sim.peers]
    sent: list[bytes] = []
    for i, p in enumerate(sim.peers):  # the same recording around the in-memory transport
        sim._client = (lambda peer, i=i: recording(sim.network.client(sim.peers[i].address), sent))  # type: ignore[method-assign]

    async def exchange(i: int, j: int) -> bool:
        member = engines[i].membership.get(addresses[j])
        return await engines[i].exchange_with(member, sim._client(sim.peers[i]))

    async def replay(i: int, j: int, packet: Buffer) -> None:
        with pytest.raises(ExchangeRefused) as refused:
            await sim.network.exchange(addresses[i], addresses[j], packet, CONFIG.timeout)
        assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS

    return sim.clock.run(Script(engines, exchange, replay, sent).run())


def test_scripted_exchanges_send_the_same_bytes_and_merge_the_same_models_as_two_daemons() -> None:
    data = load_dataset("digits")
    trainers = Simulator(CONFIG, data)  # the daemon side's trainers: same seeds, shards and inits
    assert type(trainers.peers[0].engine) is GossipEngine
    daemon, addresses = asyncio.run(through_grpc(trainers))
    simulated = through_simulator(addresses)
    assert [what for what, _, _ in daemon] == [what for what, _, _ in simulated]
    for (what, packets_d, digests_d), (_, packets_s, digests_s) in zip(daemon, simulated):
        assert packets_d == packets_s, what
        assert digests_d == digests_s, what
    # A refused replay sends one packet and gets no reply.
    assert [len(p) for _, p, _ in daemon] == [2, 2, 2, 2, 2, 1, 2]
