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
from protocol.merge import Contribution, MergeRule
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


@dataclass
class GossipStats:
    exchanges: int = 0
    merges: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


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

    # --- packets -----------------------------------------------------------------------------
    def _choose_codec(self, _name: str, x) -> Codec:  # noqa: ANN001 - numpy array
        return self.codec if self.codec.supports(x.dtype) else codecs.get("raw")

    def own_packet(self) -> bytes:
        """The current model, framed for the wire."""
        state = self.trainer.state()
        stats = self.trainer.stats()
        header = PacketHeader(sender_id=self.peer_id, sender_addr=self.address, fingerprint=self.fingerprint,
                              model_version=stats.version, age=stats.steps, samples=self.trainer.samples,
                              codec=self.codec.name)
        return encode_packet(header, state, self._choose_codec)

    def decode(self, data: bytes) -> Packet:
        return decode_packet(data, expected=self.specs, limits=self.limits)

    def _merge(self, packet: Packet) -> None:
        received = Contribution(packet.tensors, samples=packet.header.samples)
        self.trainer.merge_with(
            lambda current: self.merge_rule.merge(Contribution(current, samples=self.trainer.samples), [received]))
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
        packet = await asyncio.to_thread(self.decode, data)
        reply = await asyncio.to_thread(self.own_packet)
        sender = packet.header.sender_addr
        if packet.header.sender_id == self.peer_id:
            return reply  # our own packet looped back through another address: nothing to learn
        self.membership.note_contact(sender, packet.header.sender_id, self.clock(), inbound=True)
        await asyncio.to_thread(self._merge, packet)
        self._account(sender, len(reply), len(data), merged=True)
        log.debug("inbound exchange with %s (%s)", packet.header.sender_id, transport_peer)
        return reply

    # --- the caller's side -------------------------------------------------------------------
    async def exchange_with(self, member: Member, exchange: Exchange) -> bool:
        """One push-pull with ``member``; returns whether a model was merged."""
        own = await asyncio.to_thread(self.own_packet)
        try:
            reply = await exchange(member.address, own, self.timeout)
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
        await asyncio.to_thread(self._merge, packet)
        self._account(member.address, len(own), len(reply), merged=True)
        return True

    def _fail(self, member: Member) -> None:
        self.link(member.address).failures += 1
        self.membership.note_failure(member.address, self.clock())

    def pick_partner(self) -> Member | None:
        """A random live member; with none live, a random known one, so a lone peer keeps knocking."""
        partner = choose_partner(self.membership.live(), self.rng)
        return partner or choose_partner(self.membership.members(), self.rng)

    async def run(self, exchange: Exchange, stopping: asyncio.Event) -> None:
        """Start an exchange every ``interval`` (±20 % jitter, so peers do not fall into lockstep)."""
        while not stopping.is_set():
            delay = self.interval * self.rng.uniform(0.8, 1.2)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
                return
            except TimeoutError:
                pass
            partner = self.pick_partner()
            if partner is not None:
                await self.exchange_with(partner, exchange)
