"""One node's SWIM + Lifeguard machine: the probe loop, dissemination, full-state sync
and the entry points the runtime calls (see the package docstring for the protocol).

The member table and the update rules it builds on are ``protocol.membership.table``
and ``protocol.membership.rules``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol.membership.config import SwimConfig, push_pull_scale, retransmit_limit
from protocol.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MemberEntry,
    Message,
    Nack,
    Output,
    Ping,
    PingReq,
    PushPull,
    Send,
    Suspect,
    Timer,
    TimerKind,
    Update,
)
from protocol.membership.rules import UpdateRules
from protocol.membership.states import ALIVE, DEAD, LEFT, LIVE, NONE, SUSPECT, Member, Source
from protocol.membership.table import AddressBook


# The most members a leaving node tells itself when its messages are not authenticated.
LEAVE_DIRECT_MAX = 512


@dataclass(slots=True)
class _Probe:
    target: int
    incarnation: int
    deadline: float
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: str
    seq: int


# The introducer of members first met through a model exchange (``note_contact``).
GOSSIP_PATH = "<gossip exchange>"


class Swim(UpdateRules):
    """One node's SWIM + Lifeguard state machine (see the package docstring).

    Runtime contract: call ``start(now)`` once, then ``on_message(msg, now)`` for every
    message received and ``on_timer(timer, now)`` for every ``Timer`` it returned when
    its time comes; carry out every returned ``Send``. ``leave(now)`` before shutting
    down (keep delivering for about a period so the leave spreads).
    """

    def __init__(self, address: str, peer_id: str = "", *, rng: random.Random,
                 config: SwimConfig = SwimConfig(), book: AddressBook | None = None,
                 track_contacts: bool = True) -> None:
        super().__init__(address, peer_id, rng=rng, config=config, book=book, track_contacts=track_contacts)
        # Addresses we sent a push-pull (the newest _MAX_ASKED): a reply from one of them
        # came over our own connection, so it confirms the member; the reply to a join
        # is also taken whole, and so are the further parts of that reply.
        self._asked: dict[str, None] = {}
        self._joins: dict[str, None] = {}
        self._trusted_parts: dict[str, None] = {}
        # Full-state rows received and not merged yet: [source, trusted, rows, next row].
        self._merge_queue: deque[list] = deque()
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._perm = (1, 0, 0, 0)    # a, b, m, k of the current probe pass
        self._seeds: list[str] = []
        self._limit = (0, 1)  # (live count, retransmit limit) cached

    # --- small helpers -------------------------------------------------------------
    def _scaled(self, seconds: float) -> float:
        """Lifeguard: a node that is itself unhealthy slows its own detector down."""
        return seconds * (self._awareness + 1)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _piggyback(self, to: int | None = None, first: Sequence[Update] = ()) -> tuple[Update, ...]:
        """Updates to ride on a message; a member we hold dead is told so, to refute.
        After our leave, every message we send says so first-hand (see ``_check_leave``)."""
        if self._left:
            first = (Leave(self.address, self._inc[self._me]), *first)
        if not first and not self._queue and (to is None or self._code(to) != DEAD):
            return ()  # the steady state: nothing to tell
        hint: list[Update] = list(first)
        if to is not None and self._code(to) == DEAD:
            hint.append(Dead(self.book.addresses[to], self._inc[to], self.address))
        if not self._queue:
            return tuple(hint)
        if self._limit[0] != self._live:
            self._limit = (self._live, retransmit_limit(self._live, self.config.retransmit_mult))
        taken = self._queue.take(self.config.max_piggyback - len(hint), self._limit[1])
        return tuple(hint + taken) if hint else tuple(taken)

    def _send(self, to: str, message: Message) -> None:
        self._out.append(Send(to, message))

    def _check_leave(self, idx: int, now: float) -> None:
        """Someone relayed member ``idx``'s Leave: ping the member, at most once a probe
        interval. A member that left answers with its own Leave while it lingers; one that
        did not answers without; one already gone is found out by the usual probes."""
        address = self.book.addresses[idx]
        asked = self._leave_checks.pop(address, None)
        if asked is not None and now - asked < self.config.probe_interval:
            self._leave_checks[address] = asked
            return
        self._leave_checks[address] = now
        if len(self._leave_checks) > self._MAX_ASKED:
            del self._leave_checks[next(iter(self._leave_checks))]
        self._send(address, Ping(self._next_seq(), self.address, address, self._piggyback(idx)))

    def _next_target(self) -> int | None:
        """Round robin over a fresh random permutation of the table each pass."""
        a, b, m, k = self._perm
        state = self._state
        for _ in range(2 * len(state) + 2):
            if k >= m:
                m = len(state)
                a = self._coprime(m)
                b = self.rng.randrange(m)
                k = 0
            i = (a * k + b) % m
            k += 1
            if i != self._me and state[i] in LIVE:
                self._perm = (a, b, m, k)
                return i
        self._perm = (a, b, m, k)
        return None

    def _coprime(self, m: int) -> int:
        if m <= 2:
            return 1
        while True:
            a = self.rng.randrange(1, m)
            if math.gcd(a, m) == 1:
                return a

    # --- entry points --------------------------------------------------------------
    def start(self, now: float) -> list[Output]:
        """Begin probing, push-pull and reconnect timers (staggered), and join the seeds."""
        out = self._begin(now)
        if self._started:
            return out
        self._started = True
        c = self.config
        self._broadcast(Alive(self.address, self.peer_id, self._inc[self._me]))
        out.append(Timer(now + self.rng.uniform(0, c.probe_interval), TimerKind.PROBE))
        if c.push_pull_interval > 0:
            out.append(Timer(now + self.rng.uniform(0, self._push_pull_every()), TimerKind.PUSH_PULL))
        if c.reconnect_interval > 0:
            out.append(Timer(now + self.rng.uniform(0, c.reconnect_interval), TimerKind.RECONNECT))
        for seed in self._seeds:
            self._send_join(seed)
        return out

    def join(self, seeds: Iterable[str], now: float) -> list[Output]:
        """Push-pull with each seed now (memberlist's Join); the seeds are remembered."""
        out = self._begin(now)
        for seed in seeds:
            self.add_seed(seed)
            if seed and seed != self.address:
                self._send_join(seed)
        return out

    _MAX_ASKED = 64

    @classmethod
    def _remember(cls, seen: dict[str, None], address: str) -> None:
        """Add ``address`` as the newest of ``seen``, forgetting the oldest past the bound."""
        seen.pop(address, None)
        seen[address] = None
        if len(seen) > cls._MAX_ASKED:
            del seen[next(iter(seen))]

    def _send_join(self, to: str) -> None:
        self._remember(self._joins, to)
        self._ask(to, join=True)

    def _ask(self, to: str, join: bool = False) -> None:
        """Send our full state to ``to``, remembering that we asked (its reply is genuine)."""
        self._remember(self._asked, to)
        self._send(to, PushPull(self.address, self._snapshot_states(), join=join))

    def leave(self, now: float) -> list[Output]:
        """Announce a graceful leave; stop probing. Keep delivering ~1 period, then stop."""
        out = self._begin(now)
        if self._left:
            return out
        self._left = True
        inc = self._inc[self._me]
        self._set(self._me, LEFT, inc, now)
        update = Leave(self.address, inc)
        self._queue.push(update)
        # Tell members directly: a leave should be known within a period or two. Without
        # authenticated messages a relayed Leave is only a hint (rules.py asks the member
        # first), so the leaver tells every live member itself, up to LEAVE_DIRECT_MAX: one
        # small message each, once. With a keyring or mTLS a few suffice and gossip relays it.
        direct = (max(self.config.gossip_nodes, self.config.indirect_checks) if self.config.authenticated
                  else LEAVE_DIRECT_MAX)
        for i in self._random_members(direct, LIVE, ()):
            self._send(self.book.addresses[i], Gossip(self.address, self._piggyback(i)))
        if not self._gossiping and self.config.gossip_nodes > 0:
            self._gossiping = True
            out.append(Timer(now + self.config.gossip_interval, TimerKind.GOSSIP))
        return out

    def on_message(self, msg: Message, now: float, max_rows: int | None = None) -> list[Output]:
        """Handle one received message (already decoded and validated).

        ``max_rows`` bounds how many rows of a push-pull are merged now; the rest waits
        for ``merge_more`` (the runtime's way to keep a huge full state from stalling it).
        """
        out = self._begin(now)
        sender = self.book.get(msg.source)
        if isinstance(msg, PushPull) and msg.reply and msg.source in self._asked:
            del self._asked[msg.source]
            if sender is not None:  # it answered on the connection we opened to it
                self._heard_from(sender)
        if isinstance(msg, PushPull):
            self._on_push_pull(msg, sender, now, max_rows)
            return out
        self._src, self._trusted = msg.source, msg.source == self.address
        try:
            for update in msg.updates:
                self._apply(update, now)
        finally:
            self._src, self._trusted = self.address, True
        if sender is not None and self._code(sender) in LIVE:
            self._leave_checks.pop(msg.source, None)  # it speaks and has not left: the report was false
        if sender is not None and self.track_contacts:
            self._contacts[sender] = now
        if isinstance(msg, Ping):
            if msg.target == self.address:
                self._send(msg.source, Ack(msg.seq, self.address, self._piggyback(sender)))
        elif isinstance(msg, Ack):
            probe = self._probes.get(msg.seq)
            if probe is not None:
                probe.acked = True
                if sender == probe.target:  # it answered our own probe: it is really there
                    self._heard_from(sender)
            else:
                relay = self._relays.pop(msg.seq, None)
                if relay is not None:
                    req = self.book.get(relay.requester)
                    self._send(relay.requester, Ack(relay.seq, self.address, self._piggyback(req)))
        elif isinstance(msg, Nack):
            probe = self._probes.get(msg.seq)
            if probe is not None:
                probe.nacks += 1
        elif isinstance(msg, PingReq):
            self._on_ping_req(msg, sender, now)
        return out

    @property
    def merge_pending(self) -> bool:
        """Rows of a received full state still wait to be merged (see ``merge_more``)."""
        return bool(self._merge_queue)

    def merge_more(self, now: float, max_rows: int | None = None) -> list[Output]:
        """Merge the next ``max_rows`` rows of the pending full state (all: None)."""
        out = self._begin(now)
        self._merge_some(now, max_rows)
        return out

    def more_states(self, source: str, states: Sequence[MemberEntry], now: float,
                    max_rows: int | None = None) -> list[Output]:
        """Further rows of the full state ``source`` just sent (a large one is handed over
        in parts as it is decoded, so its rows never all exist at once), merged like the
        first part's; ``max_rows`` as for ``on_message``."""
        out = self._begin(now)
        if states:
            self._merge_queue.append([source, source in self._trusted_parts, states, 0])
            self._merge_some(now, max_rows)
        return out

    def on_timer(self, timer: Timer, now: float) -> list[Output]:
        """Handle a timer this machine asked for; stale ones do nothing."""
        out = self._begin(now)
        kind = timer.kind
        if kind == TimerKind.PROBE_DEADLINE:
            self._finish_probe(timer.key, now)
        elif kind == TimerKind.PROBE_TIMEOUT:
            self._indirect(timer.key, now)
        elif kind == TimerKind.PROBE:
            self._probe(now)
        elif kind == TimerKind.GOSSIP:
            self._gossip(now)
        elif kind == TimerKind.SUSPICION:
            self._suspicion_expired(timer.key, now)
        elif kind == TimerKind.RELAY_TIMEOUT:
            relay = self._relays.pop(timer.key, None)
            if relay is not None:
                req = self.book.get(relay.requester)
                self._send(relay.requester, Nack(relay.seq, self.address, self._piggyback(req)))
        elif kind == TimerKind.PUSH_PULL:
            self._push_pull(now)
        elif kind == TimerKind.RECONNECT:
            self._reconnect(now)
        elif kind == TimerKind.REAP:
            self._reap(timer.key, now)
        return out

    # --- probing -------------------------------------------------------------------
    def _probe(self, now: float) -> None:
        if self._left:
            return
        interval = self._scaled(self.config.probe_interval)
        target = self._next_target()
        if target is None:
            self._out.append(Timer(now + interval, TimerKind.PROBE))
            return
        seq = self._next_seq()
        addr = self.book.addresses[target]
        inc = self._inc[target]
        self._probes[seq] = _Probe(target, inc, now + interval)
        # A suspect is told it is suspected with the very ping, so it can refute now.
        first = (Suspect(addr, inc, self.address),) if self._state[target] == SUSPECT else ()
        self._send(addr, Ping(seq, self.address, addr, self._piggyback(target, first)))
        timeout = min(self._scaled(self.config.probe_timeout), interval)
        self._out.append(Timer(now + timeout, TimerKind.PROBE_TIMEOUT, seq))
        self._out.append(Timer(now + interval, TimerKind.PROBE_DEADLINE, seq))

    def _indirect(self, seq: int, now: float) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        helpers = self._random_members(self.config.indirect_checks, (ALIVE,), (probe.target,))
        probe.expected_nacks = len(helpers)
        target = self.book.addresses[probe.target]
        nack_after = max(0.0, probe.deadline - now) * self.config.indirect_nack_fraction
        for h in helpers:
            self._send(self.book.addresses[h],
                       PingReq(seq, self.address, target, nack_after, self._piggyback(h)))

    def _finish_probe(self, seq: int, now: float) -> None:
        probe = self._probes.pop(seq, None)
        if probe is None:
            return
        if probe.acked:
            self._awareness_delta(-1)
        else:
            # Missing nacks mean our own messages are not getting through: that is our
            # health, not the target's. Without helpers, any failure counts against us.
            missed = probe.expected_nacks - probe.nacks
            self._awareness_delta(max(0, missed) if probe.expected_nacks > 0 else 1)
            t = probe.target
            if self._code(t) in LIVE and self._inc[t] == probe.incarnation:
                self._apply(Suspect(self.book.addresses[t], probe.incarnation, self.address), now)
        self._probe(now)

    def _on_ping_req(self, msg: PingReq, sender: int | None, now: float) -> None:
        if len(self._relays) >= self.config.max_relays or msg.target == self.address:
            if msg.target == self.address:  # asked to probe ourselves: we are the answer
                self._send(msg.source, Ack(msg.seq, self.address, self._piggyback(sender)))
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(msg.source, msg.seq)
        target = self.book.get(msg.target)
        self._send(msg.target, Ping(seq, self.address, msg.target, self._piggyback(target)))
        wait = min(msg.nack_after, self._scaled(self.config.probe_interval))
        self._out.append(Timer(now + wait, TimerKind.RELAY_TIMEOUT, seq))

    # --- dissemination -------------------------------------------------------------
    def _gossip(self, now: float) -> None:
        if not self._queue:
            self._gossiping = False
            return
        for i in self._random_members(self.config.gossip_nodes, LIVE, ()):
            updates = self._piggyback(i)
            if updates:
                self._send(self.book.addresses[i], Gossip(self.address, updates))
        self._out.append(Timer(now + self.config.gossip_interval, TimerKind.GOSSIP))

    def _push_pull_every(self) -> float:
        return push_pull_scale(self.config.push_pull_interval, self._live)

    def _push_pull(self, now: float) -> None:
        self._out.append(Timer(now + self._push_pull_every(), TimerKind.PUSH_PULL))
        if self._left:
            return
        picked = self._random_members(1, (ALIVE,), ())
        if picked:
            to = self.book.addresses[picked[0]]
        elif self._seeds:  # alone: knock on a seed again (rejoin after a restart)
            self._send_join(self.rng.choice(self._seeds))
            return
        else:
            return
        self._ask(to)

    def _reconnect(self, now: float) -> None:
        self._out.append(Timer(now + self.config.reconnect_interval, TimerKind.RECONNECT))
        if self._left or not self._dead:
            return
        victim = self.rng.choice(sorted(self._dead))
        self._ask(self.book.addresses[victim])

    def _on_push_pull(self, msg: PushPull, sender: int | None, now: float, max_rows: int | None) -> None:
        mine = self._snapshot_states() if not msg.reply else ()
        trusted = msg.reply and msg.source in self._joins  # the seed's answer to our join
        self._joins.pop(msg.source, None)
        # Further parts of this full state (more_states) are trusted as its first was.
        self._trusted_parts.pop(msg.source, None)
        if trusted:
            self._remember(self._trusted_parts, msg.source)
        if not (self.book.snapshots and msg.states is self._snapshot_states()):
            # (a snapshot object shared through our book is identical to our table: skip)
            self._merge_queue.append([msg.source, trusted, msg.states, 0])
            self._merge_some(now, max_rows)
        if not msg.reply:
            self._send(msg.source, PushPull(self.address, mine, reply=True))
        sender = self.book.get(msg.source)  # it may have been new to us before the merge
        if sender is not None and self.track_contacts:
            self._contacts[sender] = now

    def _merge_some(self, now: float, max_rows: int | None) -> None:
        """Fold the next ``max_rows`` pending full-state rows in (all of them: None)."""
        budget = math.inf if max_rows is None else max_rows
        queue = self._merge_queue
        while queue and budget > 0:
            segment = queue[0]
            source, trusted, states, start = segment
            stop = len(states) if budget >= len(states) - start else start + int(budget)
            self._src, self._trusted = source, trusted or source == self.address
            try:
                self._merge_states(states[start:stop] if start or stop < len(states) else states, source, now)
            finally:
                self._src, self._trusted = self.address, True
            budget -= stop - start
            if stop >= len(states):
                queue.popleft()
            else:
                segment[3] = stop

    # --- the view the runtime reads (beyond the table's) ------------------------------
    def suspicion_deadline(self, address: str) -> float | None:
        """When a suspect will be declared dead unless refuted (None: not suspected)."""
        idx = self.book.get(address)
        sus = self._suspicions.get(idx) if idx is not None else None
        return None if sus is None else sus.deadline

    @property
    def incarnation(self) -> int:
        return self._inc[self._me]

    @property
    def health(self) -> int:
        """Lifeguard's local-health score: 0 is healthy; the detector runs (score+1)× slower."""
        return self._awareness

    @property
    def pending_broadcasts(self) -> int:
        return len(self._queue)

    @property
    def has_left(self) -> bool:
        return self._left

    def add_seed(self, address: str) -> None:
        """Remember a seed to join through (at ``start``, and whenever we are alone)."""
        if address and address != self.address and address not in self._seeds:
            self._seeds.append(address)

    def note_contact(self, address: str, peer_id: str, now: float, inbound: bool = False) -> Member | None:
        """A gossip exchange with ``address`` worked; record it for the operator's view.

        It does not override the detector: a member we hold dead stays dead until it
        refutes (it will, through the Dead hint on our next answer to it). A member we
        did not know yet is added alive at incarnation 0, and its own Alive will win; it
        counts against the gossip path's hearsay quota until SWIM hears from it, so
        packets claiming ever new sender addresses add at most ``hearsay_quota``.
        """
        if not address or address == self.address:
            return None
        idx = self.book.get(address)
        if idx is None or self._code(idx) == NONE:
            # A packet's sender address is its own claim: the member is hearsay (from the
            # gossip path as a whole) until SWIM hears from it, bounded like any other.
            self._src, self._trusted = GOSSIP_PATH, False
            try:
                idx = self._admit(address)
            finally:
                self._src, self._trusted = self.address, True
            if idx is None:
                return None
            self._sources[idx] = Source.INBOUND if inbound else Source.GOSSIP
            self._begin(now)
            self._set(idx, ALIVE, 0, now)
        if peer_id:
            self.book.set_peer_id(idx, peer_id)
        if not inbound:
            self._heard_from(idx)  # an exchange we started: it answered from that address
        self._contacts[idx] = now
        self._failures.pop(idx, None)
        return self._member(idx)

    def note_failure(self, address: str, now: float) -> None:
        """A gossip exchange failed: counted for the operator; the detector decides death."""
        idx = self.book.get(address)
        if idx is not None and self._code(idx) != NONE:
            self._failures[idx] = self._failures.get(idx, 0) + 1
