"""The answering side of an exchange, in three steps, so that the reply can travel while the
request is still arriving.

1. **open**, on the request's header (the transport has its first frame): every check a header
   decides (a model, not from ourselves, a sender the connection may speak for, not banned, a
   link not already exchanging, not a replayed or stale update), the link's lock, and our reply,
   prepared *uncommitted*: what the partner holds of our model moves only if its request is taken.
2. **finish**, on the whole request: decoded and validated, its header the one opened on, the
   replay guard's note, the partner's update applied to our copy of its model; our reply commits.
3. **settle**, once the reply is on its way: the merge, then the link's release.

Why: an exchange was a question, then an answer. The answering peer read the whole request,
decoded, accepted and merged it, and only then sent a byte back, so a push-pull took both
directions one after the other plus our merge (bench/RESULTS.md, "Issue 12, session 7": four
serial model-sized steps). The reply depends on the request's header alone; its tensors only
decide whether we take it. So the gRPC servicer (peer.transport.grpc_transport) opens on the
first frame, streams all but the reply's last frame as the request's bytes arrive (never more
than have arrived: a stranger cannot get a model for a header), sends the last frame once the
request is finished, and merges after it: the caller never waits for our merge.

Every in-process caller (the simulator, tests) runs the same three steps in a row
(``GossipEngine.handle_inbound``), so the bytes and models of an exchange are the same either way
(tests/peer/test_sim_daemon.py).

Errors: ``open_early`` never raises. Whatever it cannot vouch for from the header, it leaves to
``open_whole``, which decodes the whole packet first and raises the refusal the packet earns,
exactly as before. A request whose body then fails (``finish`` raises) is ``abandon``ed: our
prepared reply is dropped (the partner never gets its last frame, so it never applies it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import numpy as np

from peer.runtime.defence import Defence
from peer.transport.identity import AddressOwners, Caller, HostResolver, Impersonation, needs_lookup, resolve_identity
from protocol.errors import Banned, MalformedPacket, Refusal
from protocol.feedback import LinkUpdateHeader, NeedKeyframe, Receiver, Sender
from protocol.membership import MembershipView
from protocol.replay import ReplayGuard
from protocol.wire import Buffer, Limits, Packet, PacketHeader, encode_no_model, packet_size, peek_header


class SelfExchange(Refusal):
    """A peer reached itself through an alias of its own address; the caller drops that member."""

    reason = "self"


class LinkBusy(Refusal):
    """An inbound exchange on a link that is already exchanging; the caller retries later."""

    reason = "busy"


class GossipEngine(Protocol):
    """What these steps use of ``peer.runtime.gossip.GossipEngine`` (which imports this module)."""

    peer_id: str
    fingerprint: bytes
    limits: Limits
    owners: AddressOwners
    resolver: HostResolver
    defence: Defence
    replay_guard: ReplayGuard
    sender: Sender
    receiver: Receiver
    membership: MembershipView
    clock: Callable[[], float]
    in_flight: int

    def decode(self, data: Buffer) -> Packet: ...
    def link_busy(self, address: str) -> bool: ...
    async def take_link(self, address: str) -> Callable[[], Awaitable[None]]: ...
    def header_for(self, link: str, samples: int | None) -> PacketHeader: ...
    def own_packet_parts(self, link: str, commit: bool = True) -> list[Buffer]: ...
    def newcomer_keyframe(self, sender: str) -> list[Buffer]: ...
    def apply_update(self, link: str, packet: Packet) -> Mapping[str, np.ndarray] | None: ...
    def count_keyframe_request(self, why: NeedKeyframe) -> None: ...
    def want_keyframe(self, link: str) -> None: ...
    def wants_keyframe(self, link: str) -> bool: ...
    def remember_report(self, address: str, packet: Packet) -> None: ...
    def taken(self, link: str, packet: Packet, model: Mapping[str, np.ndarray], inbound: bool) -> bool: ...
    def merge(self, model: Mapping[str, np.ndarray], samples: int, sender: str = "") -> None: ...
    def account(self, address: str, sent: int, received: int, merged: bool) -> None: ...


class InboundExchange:
    """One inbound exchange between its steps. ``reply`` is our packet, ready once opened."""

    def __init__(self, engine: GossipEngine, header: PacketHeader, who: str, reply: list[Buffer],
                 release: Callable[[], Awaitable[None]] | None, *, packet: Packet | None = None,
                 unfit: NeedKeyframe | None = None, wanted: bool = False) -> None:
        self.engine = engine
        self.header = header
        self.sender = header.sender_addr
        self.who = who
        self.reply = reply
        self._release = release  # the link's lock; None for a newcomer's fetch (no link moves)
        self._packet = packet    # decoded already (opened on the whole packet)
        self._unfit = unfit      # our copy cannot take this update, whatever its tensors
        self._wanted = wanted    # the reply asks for a keyframe (restored if we abandon)
        self._model: Mapping[str, np.ndarray] | None = None
        self._received = 0
        self._finished = False
        self._over = False
        engine.in_flight += 1

    @property
    def newcomer(self) -> bool:
        return self._release is None

    async def finish(self, data: Buffer) -> None:
        """Decode and take the whole request (raises ``Refusal``: then ``abandon``)."""
        engine, h = self.engine, self.header
        packet = self._packet if self._packet is not None else await asyncio.to_thread(engine.decode, data)
        if packet.header != h:
            raise MalformedPacket("the packet's header is not the one its first frame carried")
        self._received = packet_size(data)
        if not self.newcomer:
            engine.replay_guard.admit(self.sender, h.link_epoch, h.link_seq, h.model_version)
            if self._unfit is not None:
                engine.count_keyframe_request(self._unfit)
            else:
                self._model = engine.apply_update(self.sender, packet)
            if not h.one_way:
                engine.sender.commit(self.sender)  # the partner will hold what our reply carries
        engine.membership.note_contact(self.sender, h.sender_id, engine.clock(), inbound=True)
        engine.remember_report(self.sender, packet)
        self._packet = packet
        self._finished = True

    async def settle(self) -> None:
        """After the reply: merge what was taken, release the link, count the exchange."""
        if self._over:
            return
        self._over = True
        engine, model, packet = self.engine, self._model, self._packet
        merged = model is not None and self.header.samples > 0
        try:
            if merged and packet is not None and not engine.taken(self.sender, packet, model, inbound=True):
                await asyncio.to_thread(engine.merge, model, self.header.samples, self.who)
        finally:
            await self._end()
            engine.account(self.sender, packet_size(self.reply), self._received, merged=merged)

    async def abandon(self) -> None:
        """The request was refused (or the call ended) before ``finish`` took it: our reply is
        dropped, so what the partner holds of our model stays what it was."""
        if self._over:
            return
        if self._finished:
            await self.settle()  # taken: it is merged whatever became of the reply
            return
        self._over = True
        if not self.newcomer and not self.header.one_way:
            self.engine.sender.discard(self.sender)
        if self._wanted:
            self.engine.want_keyframe(self.sender)  # the reply that asked for it never went
        await self._end()

    async def _end(self) -> None:
        self.engine.in_flight -= 1
        if self._release is not None:
            await self._release()


def open_early(engine: GossipEngine, head: Buffer, caller: Caller) -> Awaitable[InboundExchange | None] | None:
    """On a request's first frame (not kept): the opening, or None when its header is not all
    there or not one to answer early. The opening itself resolves to None when any check fails:
    ``open_whole`` then refuses the whole packet as it deserves."""
    header = peek_header(head, engine.limits)
    if header is None or not header.carries_model or header.sender_id == engine.peer_id \
            or header.fingerprint != engine.fingerprint:
        return None
    return _open(engine, header, caller, None)


async def open_whole(engine: GossipEngine, data: Buffer, caller: Caller) -> InboundExchange:
    """On the whole request: decoded first, then every check, raising its refusal."""
    packet = await asyncio.to_thread(engine.decode, data)
    if not packet.header.carries_model:  # only an answer may come without a model
        raise MalformedPacket("an exchange must open with a model")
    if packet.header.sender_id == engine.peer_id:
        raise SelfExchange("a packet from this peer itself (our own address under another name)")
    opened = await _open(engine, packet.header, caller, packet)
    assert opened is not None
    return opened


async def _open(engine: GossipEngine, h: PacketHeader, caller: Caller, packet: Packet | None
                ) -> InboundExchange | None:
    """The checks a header decides, the link's lock, our reply. ``packet`` None: early, so a
    failed check answers None instead of raising."""
    early = packet is None
    sender = h.sender_addr
    # The header's sender is a claim: the connection decides whether it may make it, and
    # who answers for it (a certificate, or the address itself when keyed or host-tied).
    try:
        args = (sender, caller, engine.owners, engine.resolver)
        who = await asyncio.to_thread(resolve_identity, *args) if needs_lookup(sender, caller) \
            else resolve_identity(*args)
    except Impersonation:
        if early:
            return None
        if caller.certificate:  # a cluster member lying about its address: its own books pay
            engine.defence.record(caller.certificate, "rejected", "impersonation")
        raise
    if engine.defence.is_banned(who):  # its reputation fell below the threshold: dropped unmerged, unanswered
        if early:
            return None
        raise Banned(f"{who} is banned ({engine.defence.standing(who)[2]})")
    if h.samples == 0:
        # A peer fetching its first model (its own is backed by no data): a one-off keyframe
        # of ours. Nothing of the link changes on either side, so no link lock is needed —
        # two newcomers asking each other at once cannot refuse each other.
        reply = await asyncio.to_thread(engine.newcomer_keyframe, sender)
        return InboundExchange(engine, h, who, reply, None, packet=packet)
    if engine.link_busy(sender):
        if early:
            return None
        # We are exchanging with this partner right now (it called us as we called it):
        # updates on a link must stay in sequence, so this call is refused, not queued.
        raise LinkBusy(f"an exchange with {sender} is already in progress")
    release = await engine.take_link(sender)
    try:
        # A replayed or stale link update is refused before the link or model moves.
        engine.replay_guard.check(sender, h.link_epoch, h.link_seq, h.model_version)
        if h.need_keyframe:
            engine.sender.invalidate(sender)
        unfit = None if h.keyframe else engine.receiver.precheck(sender, LinkUpdateHeader(h.link_epoch, h.link_seq,
                                                                                          h.keyframe))
        if unfit is not None:
            engine.want_keyframe(sender)
        wanted = engine.wants_keyframe(sender)
        # One-way: our header alone (no model, and the link from us to the sender stays as it was).
        reply = [encode_no_model(engine.header_for(sender, None))] if h.one_way else \
            await asyncio.to_thread(engine.own_packet_parts, sender, False)
    except BaseException as e:
        await release()
        if early and isinstance(e, Refusal):
            return None
        raise
    return InboundExchange(engine, h, who, reply, release, packet=packet, unfit=unfit, wanted=wanted)
