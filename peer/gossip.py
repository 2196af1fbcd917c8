"""The exchange loop: pick a partner, push-pull models, validate, merge.

``GossipEngine`` speaks in packets (bytes); the transport delivers them. Both sides
of an exchange send the model they had *before* merging, so a push-pull is symmetric.
Everything that can block (encode, decode, merge) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from peer.trainer import Trainer
from protocol import codecs
from protocol.codecs.base import Codec
from protocol.errors import WireError
from protocol.membership import Member, StaticMembership
from protocol.merge import Contribution, MergeRule, merge_received
from protocol.sampling import choose_partner
from protocol.wire import Limits, Packet, PacketHeader, decode_packet, encode_packet, fingerprint, specs_of

log = logging.getLogger(__name__)

# exchange(address, packet, timeout) -> reply packet; raises on refusal or unreachable partner.
Exchange = Callable[[str, bytes, float], Awaitable[bytes]]


@dataclass
class LinkStats:
    """What happened between this peer and one other, as this peer saw it."""

    exchanges: int = 0
    merges: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    failures: int = 0
    # Round trip of the last successful exchange we started with this peer (seconds).
    rtt: float | None = None


@dataclass
class GossipStats:
    exchanges: int = 0
    exchanges_out: int = 0  # of which this peer was the initiator
    merges: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    # fp32 size of the model / size of the last packet sent (1.0 for the fp32 codec).
    compression_ratio: float = 0.0
    # Membership transitions this peer observed.
    suspicions: int = 0
    deaths: int = 0


class GossipEngine:
    def __init__(self, *, peer_id: str, address: str, trainer: Trainer, membership: StaticMembership,
                 merge_rule: MergeRule, codec: str, limits: Limits, rng: random.Random,
                 interval: float, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.peer_id = peer_id
        self.address = address
        self.trainer = trainer
        self.membership = membership
        self.merge_rule = merge_rule
        self.codec: Codec = codecs.get(codec)
        self.limits = limits
        self.rng = rng
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.specs = specs_of(trainer.state())
        self.fingerprint = fingerprint(self.specs)
        self.stats = GossipStats()
        self.links: dict[str, LinkStats] = {}
        self.in_flight = 0
        self.draining = False  # set by a graceful leave: start no new exchanges
        # address -> (telemetry the peer sent about itself, when it arrived)
        self.reports: dict[str, tuple[dict, float]] = {}
        self.dense_bytes = sum(x.size * 4 if x.dtype.kind == "f" else x.nbytes for x in trainer.state().values())
        # Called with the seconds one merge took (metrics histogram).
        self.on_merge: Callable[[float], None] | None = None
        self.on_exchange: Callable[[float], None] | None = None

    # --- packets -----------------------------------------------------------------------------
    def _choose_codec(self, _name: str, x) -> Codec:  # noqa: ANN001 - numpy array
        return self.codec if self.codec.supports(x.dtype) else codecs.get("raw")

    def own_packet(self) -> bytes:
        """The current model, framed for the wire."""
        state = self.trainer.state()
        stats = self.trainer.stats()
        header = PacketHeader(sender_id=self.peer_id, sender_addr=self.address, fingerprint=self.fingerprint,
                              model_version=stats.version, age=stats.steps, samples=self.trainer.samples,
                              codec=self.codec.name, telemetry=self.telemetry())
        packet = encode_packet(header, state, self._choose_codec)
        self.stats.compression_ratio = self.dense_bytes / max(len(packet), 1)
        return packet

    def telemetry(self) -> dict[str, float | int]:
        t = self.trainer.stats()
        g = self.stats
        return {"steps": t.steps, "acc": t.accuracy, "exch": g.exchanges, "out": g.bytes_sent,
                "in": g.bytes_received, "ratio": g.compression_ratio}

    def _remember_report(self, address: str, packet: Packet) -> None:
        self.reports[address] = (dict(packet.header.telemetry), self.clock())

    def decode(self, data: bytes) -> Packet:
        return decode_packet(data, expected=self.specs, limits=self.limits)

    def _merge(self, packet: Packet) -> None:
        started = time.perf_counter()
        received = Contribution(packet.tensors, samples=packet.header.samples)
        self.trainer.merge_with(
            lambda current: merge_received(self.merge_rule, current, self.trainer.samples, [received]))
        if self.on_merge is not None:
            self.on_merge(time.perf_counter() - started)
        if self.trainer.stats().done:
            self.trainer.evaluate()  # training has stopped: refresh accuracy after each merge

    def link(self, address: str) -> LinkStats:
        return self.links.setdefault(address, LinkStats())

    def count_rejected(self, error: WireError) -> None:
        self.stats.rejected += 1
        self.stats.rejected_by_reason[error.reason] = self.stats.rejected_by_reason.get(error.reason, 0) + 1
        log.warning("refused a packet (%s): %s", error.reason, error.message)

    def _account(self, address: str, sent: int, received: int, merged: bool) -> None:
        link = self.link(address)
        link.exchanges += 1
        link.bytes_sent += sent
        link.bytes_received += received
        self.stats.exchanges += 1
        self.stats.bytes_sent += sent
        self.stats.bytes_received += received
        if merged:
            link.merges += 1
            self.stats.merges += 1

    # --- the callee's side -------------------------------------------------------------------
    async def handle_inbound(self, data: bytes, transport_peer: str) -> bytes:
        """Validate a partner's packet, merge it, answer with our pre-merge model.

        Raises ``WireError`` (the model untouched) when the packet is refused.
        """
        self.in_flight += 1
        try:
            return await self._handle_inbound(data, transport_peer)
        finally:
            self.in_flight -= 1

    async def _handle_inbound(self, data: bytes, transport_peer: str) -> bytes:
        packet = await asyncio.to_thread(self.decode, data)
        reply = await asyncio.to_thread(self.own_packet)
        sender = packet.header.sender_addr
        if packet.header.sender_id == self.peer_id:
            return reply  # our own packet looped back through another address: nothing to learn
        self.membership.note_contact(sender, packet.header.sender_id, self.clock(), inbound=True)
        self._remember_report(sender, packet)
        await asyncio.to_thread(self._merge, packet)
        self._account(sender, len(reply), len(data), merged=True)
        log.debug("inbound exchange with %s (%s)", packet.header.sender_id, transport_peer)
        return reply

    # --- the caller's side -------------------------------------------------------------------
    async def exchange_with(self, member: Member, exchange: Exchange) -> bool:
        """One push-pull with ``member``; returns whether a model was merged."""
        self.in_flight += 1
        try:
            return await self._exchange_with(member, exchange)
        finally:
            self.in_flight -= 1

    async def _exchange_with(self, member: Member, exchange: Exchange) -> bool:
        own = await asyncio.to_thread(self.own_packet)
        try:
            started = time.perf_counter()
            reply = await exchange(member.address, own, self.timeout)
            rtt = time.perf_counter() - started
            packet = await asyncio.to_thread(self.decode, reply)
        except WireError as e:
            self.count_rejected(e)
            self._fail(member)
            return False
        except Exception as e:  # noqa: BLE001 - unreachable or refusing partner: count, move on
            log.info("exchange with %s failed: %s", member.address, e)
            self._fail(member)
            return False
        if packet.header.sender_id == self.peer_id:
            self.membership.note_failure(member.address, self.clock())
            return False
        self.membership.note_contact(member.address, packet.header.sender_id, self.clock())
        self._remember_report(member.address, packet)
        await asyncio.to_thread(self._merge, packet)
        self._account(member.address, len(own), len(reply), merged=True)
        self.stats.exchanges_out += 1
        self.link(member.address).rtt = rtt
        if self.on_exchange is not None:
            self.on_exchange(rtt)
        return True

    def _fail(self, member: Member) -> None:
        self.link(member.address).failures += 1
        before = member.state
        self.membership.note_failure(member.address, self.clock())
        if member.state != before and member.state.value == "suspect":
            self.stats.suspicions += 1
        elif member.state != before and member.state.value == "dead":
            self.stats.deaths += 1

    def pick_partner(self) -> Member | None:
        """A random live member; with none live, a random known one, so a lone peer keeps knocking."""
        partner = choose_partner(self.membership.live(), self.rng)
        return partner or choose_partner(self.membership.members(), self.rng)

    def set_codec(self, name: str) -> None:
        codec = codecs.get(name)  # UnknownCodec (a ValueError-like WireError) for unknown names
        self.codec = codec

    async def run(self, exchange: Exchange, stopping: asyncio.Event) -> None:
        """Start an exchange every ``interval`` (±20 % jitter, so peers do not fall into lockstep)."""
        while not stopping.is_set():
            delay = self.interval * self.rng.uniform(0.8, 1.2)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
                return
            except TimeoutError:
                pass
            if self.draining:
                return
            partner = self.pick_partner()
            if partner is not None:
                await self.exchange_with(partner, exchange)
