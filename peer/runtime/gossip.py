"""The exchange loop: pick a partner, push-pull models, validate, merge.

``GossipEngine`` speaks in packets (bytes); the transport delivers them. Both sides
of an exchange send the model they had *before* merging, so a push-pull is symmetric.
Everything that can block (encode, decode, merge) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np

from peer.runtime import inbound
from peer.runtime.defence import Defence
from peer.runtime.gossip_stats import GossipStats, LinkStats
from peer.runtime.inbound import InboundExchange
from peer.runtime.link_locks import LinkLocks
from peer.runtime.recent import RecentMap
from peer.runtime.trainer import Trainer
from peer.transport.errors import PartnerBusy, PartnerSlow
from peer.transport.identity import AddressOwners, Caller, HostResolver
from protocol import codecs
from protocol.codecs.base import Codec
from protocol.deadlines import Budget, DeadlinePolicy, LinkEstimate
from protocol.errors import Refusal
from protocol.feedback import LinkUpdateHeader, NeedKeyframe, Receiver, Sender
from protocol.replay import ReplayGuard
from protocol.membership import Member, MembershipView, MemberState
from protocol.merge import Contribution, MergeRule
from protocol.sampling import UNCONFIRMED_SHARE, choose_partners
from protocol.wire import (Buffer, Limits, Packet, PacketHeader, decode_packet, encode_packet_parts,
                           fingerprint, packet_size, specs_of)

log = logging.getLogger(__name__)

# Codecs that keep only some coordinates: meaningful on deltas, configured with a ratio.
SPARSE_CODECS = frozenset({"topk", "topk_int8", "randk"})


def as_buffer(packet: Buffer | Sequence[Buffer]) -> Buffer:
    """One buffer for a packet given as one or as parts (handed over in-process, as in
    tests and simulations; the gRPC transport reassembles into one writable ``memoryview``)."""
    if isinstance(packet, (bytes, bytearray, memoryview)):
        return packet
    return bytearray().join(packet)


# Refusals of one kind are logged at most once per this many seconds (all are counted).
REFUSAL_LOG_SECONDS = 10.0
SIDE_TABLE_MIN = 1024  # least entries kept per side table (links, reports)

# exchange(address, packet, budget) -> reply packet; raises peer.transport.errors.ExchangeRefused
# (PartnerBusy, PartnerGone, PartnerSlow) on refusal, an unreachable or silent partner, or a
# missed deadline. The packet is one buffer or a sequence of buffers to send one after the
# other; the budget (protocol.deadlines.Budget) holds the exchange's limits.
Exchange = Callable[[str, Buffer | Sequence[Buffer], Budget], Awaitable[Buffer]]


class GossipEngine:
    def __init__(self, *, peer_id: str, address: str, trainer: Trainer, membership: MembershipView,
                 merge_rule: MergeRule, codec: str, limits: Limits, rng: random.Random,
                 interval: float, timeout: float, clock: Callable[[], float] = time.monotonic,
                 topk_ratio: float = 0.01, keyframe_codec: str = "fp32", error_feedback: bool = True,
                 max_links: int = 64, small_codec: str = "fp32", deadlines: DeadlinePolicy | None = None) -> None:
        self.peer_id = peer_id
        self.address = address
        self.trainer = trainer
        self.membership = membership
        self.merge_rule = merge_rule
        self.codec: Codec = codecs.get(codec)
        self.topk_ratio = topk_ratio
        self.small_codec = codecs.make(small_codec)
        # Per-link replicas: what each partner holds of our model (sender) and our copy of
        # each partner's model (receiver). Deltas against them are what travels.
        self.sender = Sender(self._policy(codec), keyframe_policy=codecs.policy(keyframe_codec),
                             max_links=max_links, rng=random.Random(rng.getrandbits(64)), feedback=error_feedback)
        self.receiver = Receiver(max_links=max_links)
        self.max_links = max_links
        # Link updates taken per partner: replayed or stale packets are refused (protocol/replay.py).
        self.replay_guard = ReplayGuard(max_senders=4 * max_links)
        # One link update at a time per link, in both directions (updates must stay in sequence).
        self._link_locks = LinkLocks()
        # Partners whose last update we could not apply: our next packet asks for a keyframe.
        self._want_keyframe: set[str] = set()
        self.limits = limits
        self.rng = rng
        self._interval_changed = asyncio.Event()
        self.interval = interval
        self.timeout = timeout
        # Per-link deadlines from measured rate and RTT (protocol/deadlines.py); without a
        # policy every exchange gets the fixed ``timeout`` (simulations, tests).
        self.deadlines = deadlines if deadlines is not None else DeadlinePolicy.fixed(timeout)
        self.estimates: dict[str, LinkEstimate] = RecentMap(max(SIDE_TABLE_MIN, 4 * max_links))
        self.clock = clock
        live, _hold = trainer.live()  # names, shapes and dtypes only: no copy of the model
        self.specs = specs_of(live)
        self.fingerprint = fingerprint(self.specs)
        self.stats = GossipStats()
        # reason -> (when a refusal of that kind was last logged, refusals not logged since)
        self._refusal_log: dict[str, tuple[float, int]] = {}
        # Per-sender side tables, keyed by a claimed address: bounded (issue 14).
        self.links: dict[str, LinkStats] = RecentMap(max(SIDE_TABLE_MIN, 4 * max_links))
        self.in_flight = 0
        self.draining = False  # set by a graceful leave: start no new exchanges
        # While joining, our (untrained) model is sent as backed by no data: nobody merges it.
        self.joining = False
        # address -> (telemetry the peer sent about itself, when it arrived)
        self.reports: dict[str, tuple[dict, float]] = RecentMap(max(SIDE_TABLE_MIN, 4 * max_links))
        self.dense_bytes = sum(x.size * 4 if x.dtype.kind == "f" else x.nbytes for x in live.values())
        # Called with the seconds one merge took (metrics histogram).
        self.on_merge: Callable[[float], None] | None = None
        self.on_exchange: Callable[[float], None] | None = None
        # Sampled rounds (peer/runtime/sampled_rounds.py) take every received model instead of
        # the merge: on_model(link, header, model, inbound) -> True when it took the model.
        # extra_telemetry() adds what our packets say of our model (its round and kind).
        self.on_model: Callable[[str, PacketHeader, Mapping[str, np.ndarray], bool], bool] | None = None
        self.extra_telemetry: Callable[[], dict[str, str | int]] | None = None
        # Reputation and batched merges (issue 7); the node gives it a protocol.reputation.Reputation.
        self.defence = Defence(clock=clock)
        # Who speaks for which address (peer/transport/identity.py): reputation and bans key
        # on the identity the connection proves, links on the address it may speak for.
        self.owners = AddressOwners()
        self.resolver = HostResolver()
        self._fanout = 1
        self._picks_capped = False  # unconfirmed members over their share at the last pick (logged on change)

    # --- packets -----------------------------------------------------------------------------
    def _policy(self, codec: str) -> codecs.SizeAdaptive:
        options = {"ratio": self.topk_ratio} if codec in SPARSE_CODECS else {}
        return codecs.SizeAdaptive(codecs.make(codec, **options), dense=self.small_codec)

    def own_packet(self, link: str, commit: bool = True, samples: int | None = None) -> bytes:
        """``own_packet_parts`` joined into one buffer."""
        return b"".join(self.own_packet_parts(link, commit, samples))

    def own_packet_parts(self, link: str, commit: bool = True, samples: int | None = None,
                         one_way: bool = False) -> list[Buffer]:
        """Our model for the partner at ``link``: a keyframe, or a compressed delta against
        what that partner already holds, as buffers to send one after the other (a dense
        keyframe's payloads are the link's replica itself, not copies: send them before
        the next update on this link). Call with the link's lock held. ``commit=False``
        leaves the replica update for ``sender.commit``/``discard`` (see Sender.prepare)."""
        # The live model, read a tensor at a time under the model lock (a delta needs no copy
        # of the whole model; a keyframe's copy becomes the link's replica).
        model, hold = self.trainer.live()
        update = self.sender.prepare(link, model, commit=commit, adopt=hold is None, live=hold)
        header = self.header_for(link, samples, link_epoch=update.header.epoch, link_seq=update.header.seq,
                                 keyframe=update.header.keyframe, one_way=one_way)
        parts = encode_packet_parts(header, update.shapes(), update.chooser())
        self.stats.compression_ratio = self.dense_bytes / max(packet_size(parts), 1)
        if update.header.keyframe:
            self.stats.keyframes_sent += 1
        return parts

    def header_for(self, link: str, samples: int | None, **frame: int | bool) -> PacketHeader:
        """Our header for ``link`` (asking for a keyframe if we could not apply its last update)."""
        stats = self.trainer.stats()
        wanted = link in self._want_keyframe
        self._want_keyframe.discard(link)
        return PacketHeader(sender_id=self.peer_id, sender_addr=self.address, fingerprint=self.fingerprint,
                            model_version=stats.version, age=stats.steps, codec=self.codec.name,
                            samples=(0 if self.joining else self.trainer.samples) if samples is None else samples,
                            telemetry=self.telemetry(), need_keyframe=wanted, **frame)  # type: ignore[arg-type]

    def _accept(self, link: str, packet: Packet) -> Mapping[str, np.ndarray] | None:
        """A reply from the partner we called: its request for a keyframe, and its update."""
        if packet.header.need_keyframe:
            self.sender.invalidate(link)
        return self.apply_update(link, packet)

    def apply_update(self, link: str, packet: Packet) -> Mapping[str, np.ndarray] | None:
        """Apply a partner's update to our copy of its model; the model to merge, or None
        when the update does not fit our copy (we then ask for a keyframe)."""
        h = packet.header
        # Our packets are decoded from buffers nobody else holds (``decode``): a keyframe's
        # tensors become our copy of the partner's model without another copy.
        result = self.receiver.accept(link, LinkUpdateHeader(h.link_epoch, h.link_seq, h.keyframe), packet.tensors,
                                      adopt=True)
        if isinstance(result, NeedKeyframe):
            self._want_keyframe.add(link)
            self.count_keyframe_request(result)
            return None
        return result.model

    def count_keyframe_request(self, why: NeedKeyframe) -> None:
        self.stats.keyframe_requests[why.reason] = self.stats.keyframe_requests.get(why.reason, 0) + 1

    def want_keyframe(self, link: str) -> None:
        """Our next packet to ``link`` asks for a keyframe (we cannot apply its updates)."""
        self._want_keyframe.add(link)

    def wants_keyframe(self, link: str) -> bool:
        return link in self._want_keyframe

    def telemetry(self) -> dict[str, float | int]:
        t = self.trainer.stats()
        g = self.stats
        own = {"steps": t.steps, "acc": t.accuracy, "exch": g.exchanges, "out": g.bytes_sent,
               "in": g.bytes_received, "ratio": g.compression_ratio}
        return own if self.extra_telemetry is None else {**own, **self.extra_telemetry()}

    def taken(self, link: str, packet: Packet, model: Mapping[str, np.ndarray], inbound: bool) -> bool:
        """Whether ``on_model`` took the received model (then it is not merged)."""
        return self.on_model is not None and self.on_model(link, packet.header, model, inbound)

    def remember_report(self, address: str, packet: Packet) -> None:
        self.reports[address] = (dict(packet.header.telemetry), self.clock())

    def decode(self, data: Buffer | Sequence[Buffer]) -> Packet:
        """Decode a received packet. A writable buffer (the ``memoryview`` the gRPC transport
        reassembles, the simulator's ``bytearray``) is taken over: its dense tensors are
        decoded as writable views of it. A top-k or rand-k delta stays sparse
        (``SparseTensor``): the receiver adds its entries to its copy in place, with no dense
        array of zeros the size of the model."""
        data = as_buffer(data)
        owned = isinstance(data, bytearray) or (isinstance(data, memoryview) and not data.readonly)
        return decode_packet(data, expected=self.specs, limits=self.limits, owned=owned, sparse=True)

    def merge(self, model: Mapping[str, np.ndarray], samples: int, sender: str = "") -> None:
        started = time.perf_counter()
        # Through the defence: verdicts feed the sender's reputation; batch rules (median,
        # trimmed) buffer models until merge_batch(rule) senders have sent one.
        report = self.defence.merge(self.trainer, self.merge_rule, Contribution(model, samples=samples, sender=sender))
        if report is None:
            return  # buffered for a batch merge
        if self.on_merge is not None:
            self.on_merge(time.perf_counter() - started)
        if self.trainer.stats().done:
            self.trainer.evaluate()  # training has stopped: refresh accuracy after each merge

    def link(self, address: str) -> LinkStats:
        return self.links.setdefault(address, LinkStats())

    def count_answered_early(self, reply_bytes_ahead: int) -> None:
        """An exchange this peer answered while its request arrived (the gRPC servicer's hook)."""
        self.stats.answered_early += 1
        self.stats.early_reply_bytes += reply_bytes_ahead

    def count_rejected(self, error: Refusal) -> None:
        self.stats.rejected += 1
        self.stats.rejected_by_reason[error.reason] = self.stats.rejected_by_reason.get(error.reason, 0) + 1
        # Every refusal is counted; the log gets one line per reason per REFUSAL_LOG_SECONDS,
        # so an intruder retrying every second (or a flood) cannot fill the disk.
        now = self.clock()
        last, quiet = self._refusal_log.get(error.reason, (-math.inf, 0))
        if now - last < REFUSAL_LOG_SECONDS:
            self._refusal_log[error.reason] = (last, quiet + 1)
            return
        self._refusal_log[error.reason] = (now, 0)
        more = f" ({quiet} more of this kind in the last {now - last:.0f} s, not logged)" if quiet else ""
        log.warning("refused a packet (%s): %s%s", error.reason, error.message, more)

    def count_membership_refusal(self, why: str) -> None:
        """A membership message refused (the servicer logged it): counted with the packets,
        under reason ``membership``, so Status and the metrics show every refusal."""
        self.stats.rejected += 1
        self.stats.rejected_by_reason["membership"] = self.stats.rejected_by_reason.get("membership", 0) + 1

    def account(self, address: str, sent: int, received: int, merged: bool) -> None:
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

    # --- the callee's side (peer/runtime/inbound.py: open, finish, settle) ------------------------
    async def handle_inbound(self, data: Buffer | Sequence[Buffer], caller: Caller | str) -> list[Buffer]:
        """Validate a partner's packet, merge it, answer with our pre-merge model: the three
        steps of ``peer.runtime.inbound`` in a row, as the gRPC servicer runs them with the
        reply streamed in between.

        ``caller`` is what the connection proves (peer/transport/identity.py); a bare
        string is an in-process caller (tests, the simulator), whose claim stands.
        Raises ``Refusal`` (the model untouched) when the packet is refused.
        """
        data = as_buffer(data)
        if isinstance(caller, str):
            caller = Caller(connection=caller)
        opening = self.open_early(data, caller)  # the header alone, as on a stream's first frame
        answer = await opening if opening is not None else None
        if answer is None:
            answer = await self.open_whole(data, caller)
        try:
            await answer.finish(data)
        except BaseException:
            await answer.abandon()
            raise
        await answer.settle()
        log.debug("inbound exchange with %s (%s, %s)", answer.header.sender_id, answer.who, caller.connection)
        return answer.reply

    def open_early(self, head: Buffer, caller: Caller) -> Awaitable[InboundExchange | None] | None:
        """``peer.runtime.inbound.open_early``: answering on a request's first frame."""
        return inbound.open_early(self, head, caller)

    async def open_whole(self, data: Buffer, caller: Caller) -> InboundExchange:
        """``peer.runtime.inbound.open_whole``: answering a request read whole (raises ``Refusal``)."""
        return await inbound.open_whole(self, data, caller)

    def link_busy(self, address: str) -> bool:
        """Whether an exchange on the link with ``address`` is under way."""
        return self._link_locks.locked(address)

    async def take_link(self, address: str) -> Callable[[], Awaitable[None]]:
        """Hold the link with ``address`` until the returned release is awaited."""
        return await self._link_locks.take(address)

    def who(self, address: str) -> str:
        """The identity reputation and bans key on for the peer at ``address``."""
        return self.owners.get(address) or address

    def newcomer_keyframe(self, sender: str) -> list[Buffer]:
        """A one-off keyframe of our model for a peer fetching its first one, kept nowhere."""
        key = f"newcomer:{sender}"
        self.sender.invalidate(key)
        try:
            return self.own_packet_parts(key, commit=False)
        finally:
            self.sender.discard(key)

    # --- the caller's side -------------------------------------------------------------------
    async def exchange_with(self, member: Member, exchange: Exchange, one_way: bool = False) -> bool:
        """One push-pull with ``member``; returns whether a model was merged. ``one_way``: a push
        (the partner answers without a model); returns whether the partner took our packet."""
        self.in_flight += 1
        try:
            return await self._exchange_with(member, exchange, one_way)
        finally:
            self.in_flight -= 1

    async def _exchange_with(self, member: Member, exchange: Exchange, one_way: bool) -> bool:
        if self._link_locks.locked(member.address):
            return False  # that partner is exchanging with us right now
        async with self._link_locks.hold(member.address):
            return await self._exchange_locked(member, exchange, one_way)

    async def _exchange_locked(self, member: Member, exchange: Exchange, one_way: bool) -> bool:
        link = member.address
        if self.defence.is_banned(self.who(link)):  # pick_partner skips banned peers; this covers other callers
            return False
        own = await asyncio.to_thread(self.own_packet_parts, link, False, None, one_way)
        estimate = self.estimates.setdefault(link, LinkEstimate())
        try:
            started = time.perf_counter()
            reply = await exchange(link, own, self.budget(link, packet_size(own)))
            rtt = time.perf_counter() - started
            estimate.observe(packet_size(own) + len(reply), rtt)
            packet = await asyncio.to_thread(self.decode, reply)
        except Refusal as e:
            self.sender.invalidate(link)  # our update may or may not have arrived: restart the link
            self.count_rejected(e)
            self.defence.record(self.who(link), "rejected", e.reason)  # its reply was invalid: its reputation pays
            self._fail(member)
            return False
        except PartnerBusy as e:
            # It was busy exchanging with us, or full (peer/transport/admission.py), and refused
            # before applying our frame: the link stays as it is, and a partner that is
            # merely busy is not a failing one (the failure detector judges liveness).
            self.sender.discard(link)
            log.debug("exchange with %s skipped: %s", link, e)
            return False
        except Exception as e:  # noqa: BLE001 - unreachable or refusing partner: count, move on
            self.sender.invalidate(link)  # our update may or may not have arrived: restart the link
            if isinstance(e, PartnerSlow):
                estimate.missed(self.deadlines)  # the next exchange on this link gets twice the time
            log.info("exchange with %s failed: %s", link, e)
            self._fail(member)
            return False
        if packet.header.sender_id == self.peer_id:
            self.sender.invalidate(link)
            self.membership.note_failure(link, self.clock())
            return False
        self.sender.commit(link)  # the partner answered, so it applied (or asked to restart) our update
        self.membership.note_contact(link, packet.header.sender_id, self.clock())
        self.remember_report(link, packet)
        model = None
        if packet.header.carries_model:
            self.replay_guard.note(link, packet.header.link_epoch, packet.header.link_seq, packet.header.model_version)
            model = self._accept(link, packet)
        elif packet.header.need_keyframe:  # the answer to a one-way packet, and our update did not fit
            self.sender.invalidate(link)
        if model is not None and not self.taken(link, packet, model, inbound=False):
            await asyncio.to_thread(self.merge, model, packet.header.samples, self.who(link))
        self.account(link, packet_size(own), len(reply), merged=model is not None)
        pushed = one_way and not packet.header.carries_model and not packet.header.need_keyframe  # it took ours
        if model is None and not pushed:
            return False
        self.stats.exchanges_out += 1
        self.link(member.address).rtt = rtt
        if self.on_exchange is not None:
            self.on_exchange(rtt)
        return True

    def budget(self, link: str, sending: int) -> Budget:
        """The limits of an exchange that sends ``sending`` bytes on ``link``: sized for a
        reply as large as a dense keyframe of our model (a partner may restart the link)."""
        estimate = self.estimates.get(link) or LinkEstimate()
        return estimate.budget(self.deadlines, sending + self.dense_bytes)

    def _fail(self, member: Member) -> None:
        self.link(member.address).failures += 1
        before = member.state
        self.membership.note_failure(member.address, self.clock())
        if member.state != before and member.state is MemberState.SUSPECT:
            self.stats.suspicions += 1
        elif member.state != before and member.state is MemberState.DEAD:
            self.stats.deaths += 1

    async def bootstrap(self, candidates: Callable[[], list[str]], exchange: Exchange, deadline: float,
                        min_partner_steps: int) -> str:
        """Joining a running swarm: adopt a trained model from a live member before training.

        Tries the candidate addresses until one answers or ``deadline`` (on ``self.clock``)
        passes. Our packet declares zero samples, so the partner answers without merging
        our untrained model. The partner's model is adopted only if it has trained at least
        ``min_partner_steps`` steps; a swarm that is itself just starting keeps its
        independent initialisations. Returns the address adopted from, or "".
        """
        last_try: dict[str, float] = {}
        while self.clock() < deadline:
            now = self.clock()
            fresh = [a for a in candidates() if a != self.address and now - last_try.get(a, -1e9) >= 1.0]
            if not fresh:
                await asyncio.sleep(0.2)  # waiting for discovery or for a retry, with a deadline
                continue
            link = fresh[self.rng.randrange(len(fresh))]
            last_try[link] = now
            async with self._link_locks.hold(link):
                own = await asyncio.to_thread(self.own_packet, link, False, 0)
                try:
                    reply = await exchange(link, own, self.budget(link, len(own)))
                    packet = await asyncio.to_thread(self.decode, reply)
                except Exception as e:  # noqa: BLE001 - try the next candidate
                    self.sender.invalidate(link)
                    log.info("bootstrap from %s failed: %s", link, e)
                    continue
                self.sender.discard(link)  # the partner answers newcomers without applying their update
                self.replay_guard.note(link, packet.header.link_epoch, packet.header.link_seq,
                                    packet.header.model_version)
                model = self._accept(link, packet)
            self.remember_report(link, packet)
            self.membership.note_contact(link, packet.header.sender_id, self.clock())
            if model is None or packet.header.age < min_partner_steps:
                log.info("joined a swarm that is just starting (%s has %d steps): keeping our own "
                         "initialisation", packet.header.sender_id, packet.header.age)
                return ""
            snapshot = {k: np.array(v, copy=True) for k, v in model.items()}
            await asyncio.to_thread(self.trainer.merge_with, lambda _current: snapshot, adopt=True)
            log.info("adopted the model of %s (%d steps) before training", packet.header.sender_id,
                     packet.header.age)
            return packet.header.sender_id
        log.info("no peer answered within the bootstrap time: training from our own initialisation")
        return ""

    def pick_partner(self) -> Member | None:
        """A random alive member; with none alive, a random one that has not left.

        Members known only by hearsay (not ``confirmed``) draw at most
        ``protocol.sampling.UNCONFIRMED_SHARE`` of the picks together, so a flood of made-up
        members cannot crowd out the real partners (issue 14, attack 2); while they are
        few, the choice is uniform. Suspects are skipped: an exchange costs a whole model
        each way, and a suspect is likely gone (the failure detector, not a failed exchange,
        decides). The fallback keeps a lone peer of the static view knocking on its seeds;
        under SWIM it rarely matters, since SWIM rejoins through the seeds by itself.
        Banned peers (``protocol.reputation``) are never chosen.
        """
        partners = self.pick_partners(1)
        return partners[0] if partners else None

    def _unbanned_members(self) -> list[Member]:
        """Members whose identity (not merely their address) is not banned."""
        return [m for m in self.membership.members() if not self.defence.is_banned(self.who(m.address))]

    def pick_partners(self, k: int) -> list[Member]:
        """``k`` distinct partners as ``pick_partner`` chooses one (k = 1: exactly ``pick_partner``)."""
        members = self._unbanned_members()
        chosen = (choose_partners(members, k, self.rng, is_live=lambda m: m.state is MemberState.ALIVE,
                                  is_confirmed=lambda m: m.confirmed)
                  or choose_partners(members, k, self.rng, is_live=lambda m: m.state is not MemberState.LEFT,
                                     is_confirmed=lambda m: m.confirmed))
        self._count_picks(members, chosen)
        return chosen

    def _count_picks(self, members: list[Member], chosen: list[Member]) -> None:
        """Count the picks of unconfirmed members (Status/metrics), and log when their
        number goes over the share where the choice stops being uniform, and back."""
        self.stats.partner_picks += len(chosen)
        self.stats.partner_picks_unconfirmed += sum(1 for m in chosen if not m.confirmed)
        alive = [m for m in members if m.state is MemberState.ALIVE]
        unconfirmed = sum(1 for m in alive if not m.confirmed)
        capped = unconfirmed > UNCONFIRMED_SHARE * len(alive) and unconfirmed < len(alive)
        if capped != self._picks_capped:
            self._picks_capped = capped
            if capped:
                log.warning("%d of %d alive members are known only by hearsay (not confirmed by an answer to "
                            "us): together they now get at most %.1f %% of partner picks", unconfirmed,
                            len(alive), 100 * UNCONFIRMED_SHARE)
            else:
                log.info("unconfirmed members back within their share (%d of %d alive): uniform partner "
                         "choice; %d of %d picks so far went to unconfirmed members", unconfirmed, len(alive),
                         self.stats.partner_picks_unconfirmed, self.stats.partner_picks)

    @property
    def fanout(self) -> int:
        """Exchanges started per interval; above 1, Epidemic Learning: received models wait in the
        defence and are merged at once, in one merge of K inputs, after the round's exchanges."""
        return self._fanout

    @fanout.setter
    def fanout(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"fanout must be at least 1, got {k}")
        self._fanout = k
        self.defence.defer = k > 1

    async def gossip_round(self, exchange: Exchange) -> list[bool]:
        """One interval's work: exchange with ``fanout`` partners at once; with fanout > 1 then
        merge everything that arrived since the last round, the replies included, in one merge
        (Epidemic Learning: train, send, aggregate). Merging before the pushes instead left the
        replies waiting a whole round of local steps, discounted for their age."""
        done = list(await asyncio.gather(*(self.exchange_with(m, exchange) for m in self.pick_partners(self.fanout))))
        if self.fanout > 1:
            await asyncio.to_thread(self.defence.flush, self.trainer, self.merge_rule)
        return done

    def set_codec(self, name: str) -> None:
        """Switch the delta codec; links keep their replicas (decoding is by name per tensor)."""
        self.codec = codecs.get(name)
        self.sender.policy = self._policy(name)

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval = seconds
        self._interval_changed.set()  # the loop below stops waiting out the old interval

    async def _pause(self, stopping: asyncio.Event) -> bool:
        """Wait one jittered interval; start over at once when the interval changes. True: stop."""
        while True:
            self._interval_changed.clear()
            delay = self._interval * self.rng.uniform(0.8, 1.2)
            changed = asyncio.ensure_future(self._interval_changed.wait())
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait((changed, stop), timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                stop.cancel()
            if stopping.is_set():
                return True
            if not self._interval_changed.is_set():
                return False

    async def run(self, exchange: Exchange, stopping: asyncio.Event) -> None:
        """Start an exchange every ``interval`` (±20 % jitter, so peers do not fall into lockstep)."""
        while not stopping.is_set():
            if await self._pause(stopping):
                return
            if self.draining:
                return
            await self.gossip_round(exchange)
