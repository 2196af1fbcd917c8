"""The SWIM runtime and its gRPC transport, in one process on loopback (no peer daemons)."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import grpc
import pytest

from hearsay.v1 import membership_pb2, membership_pb2_grpc
from peer.runtime.logs import JsonFormatter
from peer.runtime.membership import MembershipEvents, MembershipRuntime, count_event, parse_event_line
from peer.tools.procs import free_ports
from peer.transport.membership_grpc import MembershipClient, MembershipServicer
from protocol.membership import (
    Ack,
    Gossip,
    MemberEntry,
    MemberState,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Swim,
    SwimConfig,
)
from protocol.membership.wire import to_wire

PERIOD = 0.1  # fast enough that a death is declared within a couple of seconds


class Peer:
    """A Swim + runtime + gRPC server on a free loopback port."""

    def __init__(self, index: int, port: int) -> None:
        self.address = f"127.0.0.1:{port}"
        config = SwimConfig.for_period(PERIOD)
        self.swim = Swim(self.address, f"p{index}", rng=random.Random(index), config=config)
        self.runtime = MembershipRuntime(self.swim, MembershipClient(config.probe_timeout, 1.0))
        self.servicer = MembershipServicer(self.runtime.receive)
        self.server = grpc.aio.server()
        self.server.add_insecure_port(self.address)
        membership_pb2_grpc.add_MembershipServicer_to_server(self.servicer, self.server)

    async def start(self, seeds: list[str]) -> None:
        for s in seeds:
            self.swim.add_seed(s)
        await self.server.start()
        self.runtime.start()

    async def stop(self) -> None:
        await self.runtime.close()
        await self.server.stop(0)


async def until(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    """Await ``condition()`` becoming true, polling the loop; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def trio():
    ports = free_ports(3)
    peers = [Peer(i, port) for i, port in enumerate(ports)]
    for i, p in enumerate(peers):
        await p.start([q.address for q in peers[:i]])  # each joins through the ones before it
    yield peers
    for p in peers:
        await p.stop()


def _all_alive(peers: list[Peer]) -> bool:
    return all(p.swim.state_of(q.address) is MemberState.ALIVE for p in peers for q in peers)


async def test_peers_join_through_seeds_and_a_stopped_one_is_declared_dead(trio: list[Peer]) -> None:
    a, b, c = trio
    await until(lambda: _all_alive(trio), 5, "every peer to know every other alive")
    await c.stop()
    await until(lambda: all(p.swim.state_of(c.address) is MemberState.DEAD for p in (a, b)), 10,
                "the stopped peer to be declared dead")
    assert a.runtime.events.suspicions >= 1 and a.runtime.events.deaths == 1
    assert a.swim.state_of(b.address) is MemberState.ALIVE


async def test_a_leave_is_seen_as_left_and_the_leaver_lingers_until_it_has_gone_out(trio: list[Peer]) -> None:
    a, b, c = trio
    await until(lambda: _all_alive(trio), 5, "the swarm to form")
    await c.runtime.leave()
    assert c.swim.pending_broadcasts == 0  # it lingered until its leave was sent
    await until(lambda: all(p.swim.state_of(c.address) is MemberState.LEFT for p in (a, b)), 2 * PERIOD + 0.5,
                "the leave to reach everyone")
    assert a.runtime.events.leaves == 1 and a.runtime.events.deaths == 0


async def test_hostile_or_misrouted_bytes_are_invalid_argument_and_the_server_keeps_serving(trio: list[Peer]) -> None:
    a = trio[0]
    async with grpc.aio.insecure_channel(a.address) as channel:
        stub = membership_pb2_grpc.MembershipStub(channel)
        bad = [(stub.Ping, b"\xc1garbage"), (stub.Ping, b""), (stub.PingReq, to_wire(Ack(1, "x:1"))),
               (stub.PushPull, to_wire(Ping(1, "x:1", a.address))), (stub.Ping, b"\x92" * 10_000)]
        for method, data in bad:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(membership_pb2.Packet(data=data), timeout=2)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (data[:8], err.value.details())
        assert a.servicer.rejected == len(bad)
        # A well-formed push-pull from a stranger is answered with the full state.
        hello = PushPull("127.0.0.1:1", (MemberEntry("127.0.0.1:1", "stranger", 0, MemberState.ALIVE),), join=True)
        reply = await stub.PushPull(membership_pb2.Packet(data=to_wire(hello)), timeout=2)
    from protocol.membership.wire import from_wire

    answer = from_wire(reply.data)
    assert isinstance(answer, PushPull) and answer.reply and answer.source == a.address
    assert {e.address for e in answer.states} >= {p.address for p in trio}


async def test_the_client_swallows_every_failure_as_a_lost_message() -> None:
    (port,) = free_ports(1)
    client = MembershipClient(timeout=0.2, push_pull_timeout=0.2)
    try:
        for message in (Ping(1, "me:1", f"127.0.0.1:{port}"), PingReq(2, "me:1", "x:2", 0.1),
                        PushPull("me:1", ())):
            assert await client.send(f"127.0.0.1:{port}", message) is None
        assert await client.send("not an address", Ping(3, "me:1", "x")) is None
        assert client.failed == client.sent == 4
    finally:
        await client.close()


def test_events_are_counted_per_transition() -> None:
    e = MembershipEvents()
    A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
    for old, new in [(None, A), (A, S), (S, A), (A, S), (S, D), (D, A), (A, L)]:
        count_event(e, old, new)
    assert e == MembershipEvents(joins=1, suspicions=2, deaths=1, recoveries=2, leaves=1)


def test_event_log_lines_parse_back() -> None:
    logger = logging.getLogger("peer.runtime.membership")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                               "member %s %s -> %s incarnation %d peer %s",
                               ("127.0.0.1:7070", "suspect", "dead", 3, "peer-2"), None)
    record.peer_id = "peer-0"
    event = parse_event_line(JsonFormatter().format(record))
    assert event is not None and event.observer == "peer-0" and event.address == "127.0.0.1:7070"
    assert (event.old, event.new, event.incarnation, event.peer_id) == ("suspect", "dead", 3, "peer-2")
    assert parse_event_line('{"event": "ready"}') is None and parse_event_line("plain text") is None


async def test_a_push_pull_reply_goes_back_on_the_call_not_as_a_new_message() -> None:
    (port,) = free_ports(1)
    p = Peer(9, port)
    sent: list[object] = []
    p.runtime._loop = asyncio.get_running_loop()  # started without a server: only receive() is exercised

    async def record(to, message):  # noqa: ANN001
        sent.append((to, message))
        return None

    p.runtime.client.send = record  # type: ignore[method-assign]
    reply = p.runtime.receive(PushPull("127.0.0.1:2", (MemberEntry("127.0.0.1:2", "q", 0, MemberState.ALIVE),)))
    await asyncio.sleep(0)  # let any send task run
    assert isinstance(reply, PushPull) and reply.reply
    assert not any(isinstance(m, PushPull) for _, m in sent)
    assert p.swim.state_of("127.0.0.1:2") is MemberState.ALIVE


async def test_a_member_that_proves_alive_after_a_suspicion_gets_a_fresh_channel(trio: list[Peer]) -> None:
    """The connection our probes took to a member we suspected failed while the member was
    fine (after a partition: a TCP connection in retransmission backoff), so it is dropped
    once the member refutes, and the next message opens a new one (issue 15)."""
    a, b, _c = trio
    await until(lambda: _all_alive(trio), 5, "the swarm to form")
    await until(lambda: b.address in a.runtime.client._pool._channels, 5, "A to have talked to B")
    stale = a.runtime.client._pool._channels[b.address]
    incarnation = a.swim.incarnation_of(b.address)
    a.runtime.receive(Gossip(a.address, (Suspect(b.address, incarnation, a.address),)))
    assert a.swim.state_of(b.address) is MemberState.SUSPECT
    assert a.runtime.client._pool._channels[b.address] is stale  # suspecting alone drops nothing
    # B hears of it and refutes; once A holds it alive again, A's next message to B goes out
    # on a new channel.
    await until(lambda: a.swim.state_of(b.address) is MemberState.ALIVE, 5, "B to refute")
    await until(lambda: a.runtime.client._pool._channels.get(b.address) not in (None, stale), 5,
                "A to talk to B on a new channel")
    assert a.swim.state_of(b.address) is MemberState.ALIVE
