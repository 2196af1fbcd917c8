"""The membership view: who this peer believes is in the swarm, and in what state.

Two implementations sit behind the same view (``members()``, ``live()``, ``get()``,
``add_seed``, ``note_contact``, ``note_failure``):

* ``StaticMembership`` fills the view from static seeds and inbound contacts and gives
  up on a member after repeated failed exchanges. The daemon uses it until SWIM is
  wired into gRPC.
* ``Swim`` is a SWIM + Lifeguard failure detector and dissemination protocol, after
  hashicorp/memberlist: it probes one member per period (round robin over a shuffled
  order), asks ``indirect_checks`` others to probe on a missed ack, suspects, lets the
  suspect refute with a higher incarnation, declares it dead after a Lifeguard
  suspicion timeout that shrinks with independent confirmations, slows its own
  detector through a local-health (awareness) score, piggybacks updates on every
  message with ~λ·log(n) retransmissions, syncs full state by push-pull, and leaves
  gracefully.

Everything here is pure: no sockets, no clocks, no threads. Time arrives as ``now``
arguments, randomness from an injected ``random.Random``; every entry point returns the
list of ``Send`` (a message to deliver to an address) and ``Timer`` (call ``on_timer``
with it at ``timer.at``) the runtime must carry out. Timers are never cancelled: a timer
that no longer matters is ignored when it fires, which keeps the runtime trivial (a
heap in the simulator, ``loop.call_at`` in the daemon). A failed ``Send`` needs no
report: the protocol's own timeouts treat it as a lost message.

Choices where this deviates from, or pins down, memberlist (times in probe periods P):

* Suspicion timeout. memberlist uses ``min = SuspicionMult·max(1, log10 n)·P`` and
  ``max = SuspicionMaxTimeoutMult·min`` (4 and 6 on LAN), starting at ``max`` and
  shrinking towards ``min`` as ``k = SuspicionMult − 2`` independent confirmations
  arrive: ``t(c) = max − log(c+1)/log(k+1)·(max − min)``. We keep that curve and the
  floor, but start at ``suspicion_mult·ln(n+1)·P`` (issue 5's "4·log(n+1) periods")
  instead of 6·min: for 8 peers that is 8.8 P instead of 24 P, so a crash is declared
  within the issue's detection budget, while the floor (4 P at 8 peers, 12 P at 1,000)
  still leaves a live-but-slow suspect several dissemination rounds to refute.
* Local health scales both the probe interval and the direct probe timeout
  (Lifeguard's LHA-Probe); memberlist scales only the interval.
* The helper of an indirect probe is told how long it may wait before it nacks
  (``PingReq.nack_after``, a fraction of the requester's remaining probe time), so a
  nack arrives before the requester stops counting, whatever the probe period.
* Probe order: every pass walks the member table in a random affine permutation
  ``i ↦ (a·i + b) mod m`` — each member exactly once per pass, a fresh order each pass —
  which costs O(1) memory per node instead of a shuffled copy of the member list.
* Reconnect (from Serf, not memberlist): every ``reconnect_interval`` a node push-pulls
  with one member it believes dead, so two halves of a healed partition find each other
  again. A member that hears from a node it holds dead attaches that ``Dead`` to its
  answer, so a paused node learns it was declared dead and refutes at once.
* No TCP fallback ping: the runtime's transport (gRPC) is already a stream protocol.
* Remote ``dead`` entries in a push-pull are merged as ``suspect`` (as memberlist
  does), so a stale full state can never bury a live node outright.

What one message from a stranger can do is bounded (issue 14; memberlist trusts its
cluster and leaves this to its keyring — these rules hold without one):

* Incarnations are serial numbers modulo 2**32 (RFC 1982) instead of saturating at
  2**32−1, so no claim can pin a member where its refutation cannot outbid it; and a
  claim more than ``incarnation_window`` (1,024) ahead of the incarnation we hold is
  not believed. Honest incarnations rise by one per refutation, so only a forgery
  jumps that far, and the window keeps every comparison far inside the half range.
* A ``Dead`` from anyone but ourselves is an accusation, not a burial: it starts (or
  confirms) our own Lifeguard suspicion and cuts it to its floor, measured from when
  *we* first accused the member. The member keeps at least the floor to refute, as
  memberlist guarantees, and only our own timer declares it dead. When the prober's
  ``Dead`` arrives, the others have held the same suspicion for about as long, so
  detection stays as fast. Only accusers we hold live count as confirmations.
* New members learned from someone else ("hearsay": a gossiped ``Alive``, a row of a
  push-pull, a model packet's claimed sender address) count against that sender's
  ``hearsay_quota`` (64) until the member answers us on a connection we opened (its
  ack to our probe, its reply to our push-pull, a model exchange we started): a
  message that merely names a source proves nothing. The answer to our own join is
  exempt. One forged full state of 66,000 members adds 64, and an honest partner
  takes at most 64 of them from each neighbour that passes them on.
* Every path into the table respects ``max_members`` (a full table gives up its
  longest-dead member for a newcomer); the member count is kept, not recounted (the
  old count per new member made a 66,000-row push-pull take 43 s).
* Left members, and dead members that never answered us, are forgotten
  ``gossip_to_the_dead_time`` (memberlist: 30 s) after they went; other dead members
  after ``reconnect_timeout`` (Serf keeps them 24 h for reconnects; here 3,600 periods).
  A private address book recycles the forgotten names' slots.
* ``on_message(..., max_rows=)`` merges a full state a bounded number of rows at a time
  (``merge_more`` / ``more_states`` continue it), so the runtime never stalls on one.

Left as it is: a ``Leave`` is still believed from anyone (a graceful leave must spread
within a period or two); the member refutes it as soon as it hears it. Authenticating
the sender of a ``Leave`` is the keyring's job.
"""

from __future__ import annotations

import enum
import math
import random
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Union

class MemberState(str, enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class Source(str, enum.Enum):
    SEED = "seed"        # configured with --seeds
    INBOUND = "inbound"  # contacted us first
    GOSSIP = "gossip"    # learned from another member


@dataclass
class Member:
    """One other peer. ``peer_id`` is empty until we have heard from it."""

    address: str
    peer_id: str = ""
    state: MemberState = MemberState.ALIVE
    source: Source = Source.SEED
    last_contact: float | None = None
    consecutive_failures: int = 0

    @property
    def live(self) -> bool:
        return self.state in (MemberState.ALIVE, MemberState.SUSPECT)



@dataclass(frozen=True)
class StaticMembershipConfig:
    # Failures in a row after which a member is suspected, then declared dead.
    suspect_after_failures: int = 1
    dead_after_failures: int = 3


class StaticMembership:
    """Members keyed by gossip address; this peer's own address is never a member."""

    def __init__(self, self_address: str, config: StaticMembershipConfig = StaticMembershipConfig()) -> None:
        self.self_address = self_address
        self.config = config
        self._members: dict[str, Member] = {}

    def add_seed(self, address: str) -> None:
        if address and address != self.self_address and address not in self._members:
            self._members[address] = Member(address=address, source=Source.SEED)

    def note_contact(self, address: str, peer_id: str, now: float, inbound: bool = False) -> Member | None:
        """We heard from ``address`` (it called us, or answered our call): it is alive."""
        if not address or address == self.self_address:
            return None
        member = self._members.get(address)
        if member is None:
            member = Member(address=address, source=Source.INBOUND if inbound else Source.GOSSIP)
            self._members[address] = member
        member.peer_id = peer_id or member.peer_id
        member.state = MemberState.ALIVE
        member.last_contact = now
        member.consecutive_failures = 0
        return member

    def note_failure(self, address: str, now: float) -> None:
        """An exchange with ``address`` failed; repeated failures suspect, then bury it."""
        member = self._members.get(address)
        if member is None:
            return
        member.consecutive_failures += 1
        if member.consecutive_failures >= self.config.dead_after_failures:
            member.state = MemberState.DEAD
        elif member.consecutive_failures >= self.config.suspect_after_failures:
            member.state = MemberState.SUSPECT

    def get(self, address: str) -> Member | None:
        return self._members.get(address)

    def members(self) -> list[Member]:
        """All members ever known, in insertion order."""
        return list(self._members.values())

    def live(self) -> list[Member]:
        """Members that may be chosen as gossip partners."""
        return [m for m in self._members.values() if m.live]


# =====================================================================================
# SWIM + Lifeguard
# =====================================================================================

MAX_INCARNATION = 2**32 - 1  # memberlist's uint32; refutation saturates here


@dataclass(frozen=True)
class SwimConfig:
    """Every knob of the detector, with memberlist's LAN defaults for a 1 s period.

    Use ``SwimConfig.for_period(p)`` to scale all the time-valued defaults to another
    probe period; the multipliers are dimensionless and stay as they are.
    """

    # A member is probed every period (memberlist LAN: ProbeInterval 1 s).
    probe_interval: float = 1.0
    # Wait this long for a direct ack before asking others (ProbeTimeout 500 ms).
    probe_timeout: float = 0.5
    # Members asked to probe indirectly after a missed direct ack (IndirectChecks 3).
    indirect_checks: int = 3
    # A helper nacks after this fraction of the requester's remaining probe time.
    indirect_nack_fraction: float = 0.5
    # Suspicion starts at suspicion_mult·ln(n+1) periods (issue 5: "4·log(n+1)").
    suspicion_mult: float = 4.0
    # ... and never goes below suspicion_min_mult·max(1, log10 n) periods (memberlist's
    # SuspicionMult·log10 n scaling, used by memberlist as the same floor).
    suspicion_min_mult: float = 4.0
    # Independent confirmations that bring the timeout down to the floor
    # (memberlist: SuspicionMult − 2 = 2).
    suspicion_confirmations: int = 2
    # Each update is sent retransmit_mult·ceil(log10(n+1)) times (RetransmitMult 4).
    retransmit_mult: int = 4
    # Updates pending are also gossiped to gossip_nodes members every gossip_interval
    # (GossipInterval 200 ms, GossipNodes 3); 0 nodes: piggyback on probes only.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Most updates piggybacked on one message (memberlist: whatever fits 1,400 bytes).
    max_piggyback: int = 16
    # Bound of the broadcast queue; beyond it the most-transmitted updates go first.
    max_queue: int = 1024
    # Most members learned from the network (not memberlist: it trusts its cluster). A
    # peer (or a forged push-pull) announcing more addresses cannot grow our tables past
    # this; seeds given by the operator are always taken.
    max_members: int = 1 << 16
    # Full-state sync with one random member (PushPullInterval 30 s), stretched for
    # clusters above 32 nodes as memberlist's pushPullScale does.
    push_pull_interval: float = 30.0
    # Push-pull with one member believed dead (Serf's reconnect), to heal partitions.
    reconnect_interval: float = 10.0
    # Local health: the score runs 0..awareness_max−1 and multiplies the probe interval
    # and timeout by (score + 1) (AwarenessMaxMultiplier 8).
    awareness_max: int = 8
    # Indirect probes this node will run for others at once (a bound against floods).
    max_relays: int = 1024
    # Incarnations are serial numbers modulo 2**32 (RFC 1982), so there is no top a
    # forged claim could pin a member at: its refutation is always newer. A claim more
    # than this far ahead of the incarnation we hold is not believed: honest
    # incarnations rise by one per refutation, so only a forgery jumps that far.
    incarnation_window: int = 1024
    # New members one sender may introduce that have not answered us yet ("hearsay");
    # a member's answer (ack to our probe, reply to our push-pull) frees its slot.
    # Replies to our own join are exempt (the seed's table is what a joiner asked for).
    hearsay_quota: int = 64
    # Left members, and dead members that never answered us, are forgotten this long
    # after they went (memberlist's GossipToTheDeadTime, 30 s on LAN) ...
    gossip_to_the_dead_time: float = 30.0
    # ... other dead members are kept this long as reconnect targets (Serf's
    # reconnect_timeout, there 24 h), so a long partition can still heal.
    reconnect_timeout: float = 3600.0

    @classmethod
    def for_period(cls, period: float, **overrides: object) -> SwimConfig:
        """LAN defaults with every duration scaled to a probe period of ``period`` seconds."""
        base = cls()
        scaled = {name: getattr(base, name) * period for name in
                  ("probe_interval", "probe_timeout", "gossip_interval",
                   "push_pull_interval", "reconnect_interval", "gossip_to_the_dead_time",
                   "reconnect_timeout")}
        scaled.update(overrides)
        return replace(base, **scaled)  # type: ignore[arg-type]


# --- pure formulas ---------------------------------------------------------------------

def retransmit_limit(n: int, mult: int) -> int:
    """How many times one update is sent: ``mult·ceil(log10(n+1))`` (memberlist).

    Epidemic dissemination reaches everyone w.h.p. after O(log n) rounds; sending each
    update a multiple of log n times is what makes "everyone" the likely outcome.
    """
    return max(1, mult * math.ceil(math.log10(n + 1)))


def suspicion_bounds(n: int, config: SwimConfig) -> tuple[float, float]:
    """(floor, start) of the suspicion timeout in seconds for a cluster of ``n`` nodes."""
    p = config.probe_interval
    floor = config.suspicion_min_mult * max(1.0, math.log10(max(1, n))) * p
    start = config.suspicion_mult * math.log(n + 1) * p
    return floor, max(floor, start)


def suspicion_timeout(confirmations: int, expected: int, floor: float, start: float) -> float:
    """Lifeguard's timeout after ``confirmations`` independent suspicions (memberlist).

    Falls logarithmically from ``start`` (none) to ``floor`` (``expected`` of them):
    each independent accuser makes a false positive much less likely, so waiting the
    full time for a refutation is no longer worth the slower detection.
    """
    if expected < 1:
        return floor
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(floor, start - frac * (start - floor))


_INC_MOD = MAX_INCARNATION + 1
_INC_HALF = _INC_MOD >> 1


def incarnation_ahead(claim: int, known: int) -> int:
    """How far ``claim`` is ahead of ``known`` in serial-number arithmetic (RFC 1982).

    Negative: older. Incarnations wrap at 2**32 instead of saturating, so a member can
    always outbid any incarnation anybody holds for it (memberlist's uint32 saturates,
    which is what let one forged ``Dead(B, 2**32-1)`` bury B for good).
    """
    d = (claim - known) % _INC_MOD
    return d - _INC_MOD if d >= _INC_HALF else d


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's pushPullScale: one more interval per doubling of n above 32 nodes.

    Full-state syncs cost O(n) each; stretching them keeps the cluster-wide cost from
    growing as n².
    """
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


# --- updates and messages --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Alive:
    """``address`` is alive at ``incarnation`` (only the node itself raises it)."""

    address: str
    peer_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """``accuser`` suspects ``address`` at ``incarnation``; refuted by a higher Alive."""

    address: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``accuser`` declared ``address`` dead at ``incarnation``."""

    address: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Leave:
    """``address`` left on purpose: no suspicion, no refutation, no reconnects."""

    address: str
    incarnation: int


Update = Union[Alive, Suspect, Dead, Leave]


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One row of a push-pull full state."""

    address: str
    peer_id: str
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you alive? ``target`` is the address the sender meant, to catch misrouting."""

    seq: int
    source: str
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to the ``Ping`` with ``seq``; a helper forwards it with the requester's seq."""

    seq: int
    source: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A helper's "I asked, no answer": proof to the requester that the helper is fine."""

    seq: int
    source: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Probe ``target`` for me; ack to me with ``seq``, or nack after ``nack_after`` s."""

    seq: int
    source: str
    target: str
    nack_after: float
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    """Updates only, sent to a few random members while updates are pending."""

    source: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state. A request (``reply=False``) is answered with the receiver's own state."""

    source: str
    states: tuple[MemberEntry, ...]
    join: bool = False
    reply: bool = False


Message = Union[Ping, Ack, Nack, PingReq, Gossip, PushPull]


class TimerKind(enum.IntEnum):
    PROBE = 1            # start the next probe
    PROBE_TIMEOUT = 2    # no direct ack yet: ask for indirect probes
    PROBE_DEADLINE = 3   # end of the probe period: ack or suspect, then probe again
    RELAY_TIMEOUT = 4    # a helper got no ack from the target: nack the requester
    SUSPICION = 5        # a suspect's timeout may have expired
    PUSH_PULL = 6
    GOSSIP = 7
    RECONNECT = 8
    REAP = 9             # a dead or left member may be forgotten now


@dataclass(frozen=True, slots=True)
class Timer:
    """Call ``on_timer(timer, now)`` at ``at``; ``kind`` and ``key`` are opaque to the runtime."""

    at: float
    kind: TimerKind
    key: int = 0


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``message`` to the peer at gossip address ``to`` (loss is tolerated)."""

    to: str
    message: Message


Output = Union[Send, Timer]

# State codes in the compact member table; 0 means "not a member".
_NONE, _ALIVE, _SUSPECT, _DEAD, _LEFT = 0, 1, 2, 3, 4
_TO_STATE = {_ALIVE: MemberState.ALIVE, _SUSPECT: MemberState.SUSPECT,
             _DEAD: MemberState.DEAD, _LEFT: MemberState.LEFT}
_FROM_STATE = {v: k for k, v in _TO_STATE.items()}


# --- the broadcast queue ---------------------------------------------------------------

class BroadcastQueue:
    """Updates waiting to be piggybacked, least-transmitted (then newest) first.

    One update per subject address: a newer update about a member replaces the older
    one, which is now wrong. Kept in buckets by transmit count so a take costs
    O(returned), not a sort of the queue; bounded, dropping the most-transmitted (the
    ones that have already done most of their spreading) when full.
    """

    def __init__(self, max_size: int = 1024) -> None:
        self.max_size = max_size
        self._buckets: dict[int, dict[str, Update]] = {}
        self._sent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def transmits(self, address: str) -> int | None:
        """How often the pending update about ``address`` was sent (None: none pending)."""
        return self._sent.get(address)

    def push(self, update: Update) -> None:
        key = update.address
        old = self._sent.pop(key, None)
        if old is not None:
            self._remove(old, key)
        self._buckets.setdefault(0, {})[key] = update
        self._sent[key] = 0
        while len(self._sent) > self.max_size:
            worst = max(self._buckets)
            oldest = next(iter(self._buckets[worst]))
            self._remove(worst, oldest)
            del self._sent[oldest]

    def take(self, limit: int, retransmit_limit: int) -> list[Update]:
        """Up to ``limit`` updates to piggyback; each taken once more, dropped at the limit."""
        if not self._sent or limit <= 0:
            return []
        picked: list[tuple[int, str]] = []
        for t in sorted(self._buckets):
            for key in reversed(self._buckets[t]):
                picked.append((t, key))
                if len(picked) >= limit:
                    break
            if len(picked) >= limit:
                break
        out: list[Update] = []
        for t, key in picked:
            update = self._remove(t, key)
            out.append(update)
            if t + 1 < retransmit_limit:
                self._buckets.setdefault(t + 1, {})[key] = update
                self._sent[key] = t + 1
            else:
                del self._sent[key]
        return out

    def _remove(self, t: int, key: str) -> Update:
        bucket = self._buckets[t]
        update = bucket.pop(key)
        if not bucket:
            del self._buckets[t]
        return update


# --- names -----------------------------------------------------------------------------

class AddressBook:
    """Address ↔ table index, plus the last peer id seen for each address.

    It holds names only, never membership state, so a simulator may share one book
    among thousands of virtual nodes (their tables are then plain byte arrays indexed
    the same way); a daemon gives its one node a private book.
    """

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.peer_ids: list[str] = []
        self._index: dict[str, int] = {}
        self._entries: dict[tuple[int, int, int, str], MemberEntry] = {}
        # Full-state snapshots by table content (see Swim._snapshot_states).
        self.snapshots: dict[tuple[bytes, bytes, int], tuple[MemberEntry, ...]] = {}
        self.ids_version = 0
        self._free: list[int] = []  # indices of released addresses, reused first

    SNAPSHOTS_KEPT = 8

    def set_peer_id(self, idx: int, peer_id: str) -> None:
        if self.peer_ids[idx] != peer_id:
            self.peer_ids[idx] = peer_id
            self.ids_version += 1

    def __len__(self) -> int:
        return len(self.addresses)

    def get(self, address: str) -> int | None:
        return self._index.get(address)

    def entry(self, idx: int, incarnation: int, code: int) -> MemberEntry:
        """A shared, immutable full-state row (a flyweight: equal rows are one object)."""
        key = (idx, incarnation, code, self.peer_ids[idx])
        row = self._entries.get(key)
        if row is None:
            if len(self._entries) >= 4 * len(self.addresses) + 1024:
                # Rows of old incarnations pile up under churn; the cache only shares
                # objects, so dropping it is always safe.
                self._entries.clear()
            row = MemberEntry(self.addresses[idx], key[3], incarnation, _TO_STATE[code])
            self._entries[key] = row
        return row

    def intern(self, address: str) -> int:
        idx = self._index.get(address)
        if idx is None:
            if self._free:
                idx = self._free.pop()
                self.addresses[idx] = address
            else:
                idx = len(self.addresses)
                self.addresses.append(address)
                self.peer_ids.append("")
            self._index[address] = idx
        return idx

    def release(self, idx: int) -> None:
        """Forget the address at ``idx`` so the slot can name another one (private books
        only: a shared book's indices are every node's table layout)."""
        address = self.addresses[idx]
        if self._index.get(address) != idx:
            return
        del self._index[address]
        self.addresses[idx] = ""
        self.peer_ids[idx] = ""
        self._free.append(idx)
        # Cached rows and snapshots name addresses by index: none may outlive the name.
        self._entries.clear()
        self.snapshots.clear()
        self.ids_version += 1


# --- the state machine -----------------------------------------------------------------

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


class _Suspicion:
    """One suspect's timer: when it was suspected, by whom, and its current deadline."""

    __slots__ = ("start", "incarnation", "expected", "floor", "ceiling", "accusers", "deadline", "corroborated")

    def __init__(self, accuser: str, incarnation: int, start: float, expected: int,
                 floor: float, ceiling: float) -> None:
        self.start = start
        self.incarnation = incarnation
        self.expected = expected
        self.floor = floor
        self.ceiling = ceiling
        self.accusers = {accuser}
        self.corroborated = False
        self.deadline = start + suspicion_timeout(0, expected, floor, ceiling)

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1

    def corroborate(self) -> None:
        """Another member declared the suspect dead: wait no longer than the floor from
        our own first accusation — the time memberlist grants any suspect to refute."""
        self.corroborated = True
        self.deadline = min(self.deadline, self.start + self.floor)

    def confirm(self, accuser: str) -> bool:
        """Count an independent accuser; True if it was new (then it is worth re-gossiping)."""
        if accuser in self.accusers or self.confirmations >= self.expected:
            return False
        self.accusers.add(accuser)
        if not self.corroborated:
            self.deadline = self.start + suspicion_timeout(self.confirmations, self.expected,
                                                           self.floor, self.ceiling)
        return True


Observer = Callable[["Swim", int, int, int, float], None]

# The introducer of members first met through a model exchange (``note_contact``).
GOSSIP_PATH = "<gossip exchange>"


class Swim:
    """One node's SWIM + Lifeguard state machine (see the module docstring).

    Runtime contract: call ``start(now)`` once, then ``on_message(msg, now)`` for every
    message received and ``on_timer(timer, now)`` for every ``Timer`` it returned when
    its time comes; carry out every returned ``Send``. ``leave(now)`` before shutting
    down (keep delivering for about a period so the leave spreads).
    """

    def __init__(self, address: str, peer_id: str = "", *, rng: random.Random,
                 config: SwimConfig = SwimConfig(), book: AddressBook | None = None,
                 track_contacts: bool = True) -> None:
        self.address = address
        self.peer_id = peer_id
        self.config = config
        self.rng = rng
        self.book = book if book is not None else AddressBook()
        self.track_contacts = track_contacts
        # Called as observer(self, subject_index, old_code, new_code, now) on every
        # state change; the simulator counts detections and false deaths with it.
        self.observer: Observer | None = None
        self._me = self.book.intern(address)
        if peer_id:
            self.book.set_peer_id(self._me, peer_id)
        self._state = array("b")
        self._inc = array("I")
        self._ensure(self._me)
        self._state[self._me] = _ALIVE
        self._live = 1               # members alive or suspect, this node included
        self._members = 0            # members in any state, this node excluded
        self.refused_members = 0     # new members ignored because of config.max_members
        self.refused_hearsay = 0     # ... because their introducer used up its hearsay quota
        self.implausible = 0         # claims further ahead than config.incarnation_window
        # Members admitted on someone else's word and not heard from since: member ->
        # who introduced it; and per introducer, how many such members it has here.
        self._unconfirmed: dict[int, str] = {}
        self._introduced: dict[str, int] = {}
        # Addresses we sent a push-pull (the newest _MAX_ASKED): a reply from one of them
        # came over our own connection, so it confirms the member; the reply to a join
        # is also taken whole, and so are the further parts of that reply.
        self._asked: dict[str, None] = {}
        self._joins: dict[str, None] = {}
        self._trusted_parts: dict[str, None] = {}
        self._down_since: dict[int, float] = {}  # dead or left members: since when
        self._owns_book = book is None  # a private book may recycle the names it forgets
        # Full-state rows received and not merged yet: [source, trusted, rows, next row].
        self._merge_queue: deque[list] = deque()
        # Who the message being handled came from, and whether its claims are trusted
        # (our own decisions, a seed's answer to our join): read by _admit.
        self._src = address
        self._trusted = True
        self._dead: set[int] = set()  # DEAD (not LEFT) members: reconnect candidates
        self._suspicions: dict[int, _Suspicion] = {}
        self._queue = BroadcastQueue(config.max_queue)
        self._awareness = 0
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._perm = (1, 0, 0, 0)    # a, b, m, k of the current probe pass
        self._seeds: list[str] = []
        self._left = False
        self._started = False
        self._gossiping = False
        self._version = 0
        self._snapshot: tuple[int, tuple[MemberEntry, ...]] | None = None
        self._contacts: dict[int, float] = {}
        self._sources: dict[int, Source] = {}
        self._failures: dict[int, int] = {}
        self._out: list[Output] = []
        self._now = 0.0
        self._limit = (0, 1)  # (live count, retransmit limit) cached
        # Counters for metrics and tests.
        self.suspicions_raised = 0
        self.refutations = 0
        self.reaped = 0

    # --- compact table -------------------------------------------------------------
    def _ensure(self, idx: int) -> None:
        grow = idx + 1 - len(self._state)
        if grow > 0:
            self._state.frombytes(bytes(grow))
            self._inc.frombytes(bytes(4 * grow))

    def _code(self, idx: int) -> int:
        return self._state[idx] if idx < len(self._state) else _NONE

    def preload(self, addresses: Iterable[str], incarnation: int = 0) -> None:
        """Know ``addresses`` as alive without any message (tests, a formed cluster).

        A restarting daemon should not use this for its saved member list: those are
        seeds to join through (``add_seed``), since any of them may have died meanwhile.
        """
        for i in {self.book.intern(a) for a in addresses}:
            if i == self._me:
                continue
            self._ensure(i)
            if self._state[i] not in (_ALIVE, _SUSPECT):
                self._live += 1
            if self._state[i] == _NONE:
                self._members += 1
            self._down_since.pop(i, None)
            self._dead.discard(i)
            self._state[i] = _ALIVE
            self._inc[i] = incarnation
        self._version += 1

    def preload_book(self) -> None:
        """Know every address in the (shared) book as alive at incarnation 0, in C time."""
        size = len(self.book)
        self._state = array("b", b"\x01") * size
        self._inc = array("I", bytes(4 * size))
        self._live = size
        self._members = size - 1
        self._dead.clear()
        self._down_since.clear()
        self._version += 1

    def _set(self, idx: int, code: int, incarnation: int, now: float) -> None:
        """The one place a member's state changes (counts, suspicions, observer)."""
        self._ensure(idx)
        old = self._state[idx]
        was_live = old in (_ALIVE, _SUSPECT)
        is_live = code in (_ALIVE, _SUSPECT)
        self._live += is_live - was_live
        if idx != self._me:
            self._members += (code != _NONE) - (old != _NONE)
        if code == _DEAD:
            self._dead.add(idx)
        elif old == _DEAD:
            self._dead.discard(idx)
        if code != _SUSPECT:
            self._suspicions.pop(idx, None)
        if code in (_DEAD, _LEFT) and old not in (_DEAD, _LEFT) and idx != self._me:
            self._down_since[idx] = now
            self._out.append(Timer(now + self._reap_delay(idx, code), TimerKind.REAP, idx))
        elif code not in (_DEAD, _LEFT):
            self._down_since.pop(idx, None)
        self._state[idx] = code
        self._inc[idx] = incarnation
        self._version += 1
        if self.observer is not None and old != code:
            self.observer(self, idx, old, code, now)

    # --- small helpers -------------------------------------------------------------
    def _scaled(self, seconds: float) -> float:
        """Lifeguard: a node that is itself unhealthy slows its own detector down."""
        return seconds * (self._awareness + 1)

    def _awareness_delta(self, delta: int) -> None:
        self._awareness = min(self.config.awareness_max - 1, max(0, self._awareness + delta))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _broadcast(self, update: Update) -> None:
        self._queue.push(update)
        if not self._gossiping and self.config.gossip_nodes > 0 and self._started:
            self._gossiping = True
            self._out.append(Timer(self._now + self.config.gossip_interval, TimerKind.GOSSIP))

    def _piggyback(self, to: int | None = None, first: Sequence[Update] = ()) -> tuple[Update, ...]:
        """Updates to ride on a message; a member we hold dead is told so, to refute."""
        if not first and not self._queue and (to is None or self._code(to) != _DEAD):
            return ()  # the steady state: nothing to tell
        hint: list[Update] = list(first)
        if to is not None and self._code(to) == _DEAD:
            hint.append(Dead(self.book.addresses[to], self._inc[to], self.address))
        if not self._queue:
            return tuple(hint)
        if self._limit[0] != self._live:
            self._limit = (self._live, retransmit_limit(self._live, self.config.retransmit_mult))
        taken = self._queue.take(self.config.max_piggyback - len(hint), self._limit[1])
        return tuple(hint + taken) if hint else tuple(taken)

    def _send(self, to: str, message: Message) -> None:
        self._out.append(Send(to, message))

    def _begin(self, now: float) -> list[Output]:
        self._now = now
        self._out = []
        return self._out

    def _random_members(self, k: int, codes: tuple[int, ...], exclude: Iterable[int]) -> list[int]:
        """Up to ``k`` distinct random members whose state is in ``codes``.

        Rejection sampling over the table first (O(k) when most members qualify, the
        usual case at any size), a full scan only when that keeps missing.
        """
        if k <= 0:
            return []
        skip = set(exclude)
        skip.add(self._me)
        size = len(self._state)
        state = self._state
        chosen: list[int] = []
        for _ in range(4 * k + 8):
            i = self.rng.randrange(size)
            if i not in skip and state[i] in codes:
                chosen.append(i)
                skip.add(i)
                if len(chosen) == k:
                    return chosen
        rest = [i for i in range(size) if i not in skip and state[i] in codes]
        need = min(k - len(chosen), len(rest))
        return chosen + self.rng.sample(rest, need)

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
            if i != self._me and state[i] in (_ALIVE, _SUSPECT):
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

    _SNAPSHOT_CACHE_MAX = 4096  # above this many members, a cached copy per node costs too much

    def _snapshot_states(self) -> tuple[MemberEntry, ...]:
        """This node's full state; cached per node (small tables) and per book by content.

        Nodes that agree share one snapshot object through the book, so building it is
        paid once per distinct table, and merging a snapshot identical to ours is free.
        """
        if self._snapshot is not None and self._snapshot[0] == self._version:
            return self._snapshot[1]
        book = self.book
        key = (self._state.tobytes(), self._inc.tobytes(), book.ids_version)
        states = book.snapshots.get(key)
        if states is None:
            entry, inc = book.entry, self._inc
            states = tuple([entry(i, inc[i], c) for i, c in enumerate(self._state) if c != _NONE])
            if len(book.snapshots) >= book.SNAPSHOTS_KEPT:
                del book.snapshots[next(iter(book.snapshots))]
            book.snapshots[key] = states
        if len(states) <= self._SNAPSHOT_CACHE_MAX:
            self._snapshot = (self._version, states)
        return states

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
        self._set(self._me, _LEFT, inc, now)
        update = Leave(self.address, inc)
        self._queue.push(update)
        # Tell a few members directly: a leave should be known within a period or two.
        for i in self._random_members(max(self.config.gossip_nodes, self.config.indirect_checks),
                                      (_ALIVE, _SUSPECT), ()):
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
        first = (Suspect(addr, inc, self.address),) if self._state[target] == _SUSPECT else ()
        self._send(addr, Ping(seq, self.address, addr, self._piggyback(target, first)))
        timeout = min(self._scaled(self.config.probe_timeout), interval)
        self._out.append(Timer(now + timeout, TimerKind.PROBE_TIMEOUT, seq))
        self._out.append(Timer(now + interval, TimerKind.PROBE_DEADLINE, seq))

    def _indirect(self, seq: int, now: float) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        helpers = self._random_members(self.config.indirect_checks, (_ALIVE,), (probe.target,))
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
            if self._code(t) in (_ALIVE, _SUSPECT) and self._inc[t] == probe.incarnation:
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
        for i in self._random_members(self.config.gossip_nodes, (_ALIVE, _SUSPECT), ()):
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
        picked = self._random_members(1, (_ALIVE,), ())
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

    def _merge_states(self, states: Iterable[MemberEntry], source: str, now: float) -> None:
        """Fold remote full-state rows in: alive and left as such, suspect or dead as one
        more accusation by ``source`` (memberlist merges dead as suspect, too)."""
        book, state, inc = self.book, self._state, self._inc
        for e in states:
            idx = book.get(e.address)
            code = _FROM_STATE[e.state]
            if idx is not None and idx < len(state) and state[idx] == code and inc[idx] == e.incarnation:
                continue  # the common case: we already agree
            if code == _ALIVE:
                self._on_alive(Alive(e.address, e.peer_id, e.incarnation), now)
            elif code == _LEFT:
                self._on_leave(Leave(e.address, e.incarnation), now)
            elif idx is not None:  # suspect or dead: never bury on hearsay, suspect instead
                self._on_suspect(Suspect(e.address, e.incarnation, source), now)

    # --- the update rules (SWIM's incarnation ordering) ----------------------------
    #
    # What one message can do to a member other than its sender is bounded:
    # * an incarnation is believed only up to incarnation_window ahead of ours, and
    #   incarnations wrap instead of saturating, so the member can always refute;
    # * a Dead from anyone else is an accusation (Lifeguard's suspicion, cut to its
    #   floor), never a burial: the member keeps the floor to refute it here, and our
    #   own timer decides;
    # * a new member learned from someone else counts against that sender's hearsay
    #   quota until we hear from the member itself.
    def _apply(self, update: Update, now: float) -> None:
        if isinstance(update, Alive):
            self._on_alive(update, now)
        elif isinstance(update, Suspect):
            self._on_suspect(update, now)
        elif isinstance(update, Dead):
            self._on_dead(update, now)
        else:
            self._on_leave(update, now)

    def _plausible(self, claim: int, idx: int) -> int | None:
        """How far ``claim`` is ahead of our incarnation of known member ``idx``, or None
        — counted — when it is further than the window allows."""
        ahead = incarnation_ahead(claim, self._inc[idx])
        if ahead > self.config.incarnation_window:
            self.implausible += 1
            return None
        return ahead

    def _refute(self, accused: int, now: float) -> None:
        """Someone thinks we are not alive: outbid them with a newer incarnation."""
        if self._left:
            return
        own = self._inc[self._me]
        ahead = incarnation_ahead(accused, own)
        # An accusation further ahead than the window is believed by nobody: outbid ours.
        base = accused if 0 < ahead <= self.config.incarnation_window else own
        inc = (base + 1) % _INC_MOD
        self._inc[self._me] = inc
        self._version += 1
        self.refutations += 1
        self._awareness_delta(1)  # being suspected hints that we are the slow one
        self._broadcast(Alive(self.address, self.peer_id, inc))

    def _reassert(self) -> None:
        """A stale accusation about us is still travelling: send our current Alive again.

        Not in memberlist. Whoever still repeats the old suspicion missed our refutation
        (gossip reaches each node only with high probability); re-queueing the current
        Alive — once, while none is pending — lets the next message carry it, e.g. the
        ack to a ping that came with that suspicion.
        """
        if not self._left and self._queue.transmits(self.address) is None:
            self._broadcast(Alive(self.address, self.peer_id, self._inc[self._me]))

    def _admit(self, address: str) -> int | None:
        """A table slot for a new member, or None: the table is full of live members, or
        the member is hearsay from a sender whose quota of unconfirmed members is used up.

        A full table gives up its longest-dead member first: a live newcomer is worth
        more than a reconnect target, and an attacker must not fill the table for good.
        """
        src = self._src
        hearsay = not self._trusted and address != src
        if hearsay and self._introduced.get(src, 0) >= self.config.hearsay_quota:
            self.refused_hearsay += 1
            return None
        if self._members >= self.config.max_members:
            if not self._down_since:
                self.refused_members += 1
                return None
            self._forget(next(iter(self._down_since)), self._now)
        idx = self.book.intern(address)
        self._sources.setdefault(idx, Source.GOSSIP)
        # Unconfirmed until it answers us (see _heard_from); hearsay also holds a slot of
        # its introducer's quota until then.
        self._unconfirmed[idx] = src if hearsay else ""
        if hearsay:
            self._introduced[src] = self._introduced.get(src, 0) + 1
        return idx

    def _heard_from(self, idx: int) -> None:
        """Member ``idx`` answered on a connection we opened (its ack to our probe, its
        reply to our push-pull, a model exchange we started): it exists. A message that
        merely names it as its source proves nothing — anyone can write that."""
        src = self._unconfirmed.pop(idx, None)
        if src:
            left = self._introduced[src] - 1
            if left:
                self._introduced[src] = left
            else:
                del self._introduced[src]

    def _on_alive(self, a: Alive, now: float) -> None:
        idx = self.book.get(a.address)
        if idx == self._me:
            if incarnation_ahead(a.incarnation, self._inc[self._me]) > 0:
                self._refute(a.incarnation, now)  # a previous life of ours: overtake it
            return
        known = idx is not None and self._code(idx) != _NONE
        ahead = incarnation_ahead(a.incarnation, self._inc[idx] if known else 0)  # type: ignore[index]
        if ahead > self.config.incarnation_window:
            self.implausible += 1
            return
        if ahead < 0 or (known and ahead == 0):
            return  # SWIM: alive overrides only a strictly newer incarnation
        if not known:
            idx = self._admit(a.address)
            if idx is None:
                return
        assert idx is not None
        if a.peer_id:
            self.book.set_peer_id(idx, a.peer_id)
        self._set(idx, _ALIVE, a.incarnation, now)
        self._broadcast(a)

    def _accuser_counts(self, accuser: str) -> bool:
        """Only a member we hold live can confirm a suspicion (a made-up name cannot)."""
        idx = self.book.get(accuser)
        return idx is not None and self._code(idx) in (_ALIVE, _SUSPECT)

    def _on_suspect(self, s: Suspect, now: float, corroborated: bool = False) -> None:
        idx = self.book.get(s.address)
        if idx is None:
            return
        code = self._code(idx)
        ahead = incarnation_ahead(s.incarnation, self._inc[idx])
        if code == _NONE or ahead < 0:
            if idx == self._me:
                self._reassert()
            return
        if ahead > self.config.incarnation_window:
            self.implausible += 1
            return
        timer = self._suspicions.get(idx)
        if timer is not None and s.incarnation == timer.incarnation:
            before = timer.deadline
            fresh = self._accuser_counts(s.accuser) and timer.confirm(s.accuser)
            if corroborated:
                timer.corroborate()
            if fresh or corroborated:
                self._broadcast(s)  # let the independent confirmation travel on
            if timer.deadline < before:
                self._out.append(Timer(max(now, timer.deadline), TimerKind.SUSPICION, idx))
            return
        if idx == self._me:
            self._refute(s.incarnation, now)
            return
        if code not in (_ALIVE, _SUSPECT):
            return
        if code == _SUSPECT and s.incarnation == self._inc[idx]:
            return
        n = self._live
        expected = self.config.suspicion_confirmations if n - 2 >= self.config.suspicion_confirmations else 0
        floor, ceiling = suspicion_bounds(n, self.config)
        sus = _Suspicion(s.accuser, s.incarnation, now, expected, floor, ceiling)
        if corroborated:
            sus.corroborate()
        self._set(idx, _SUSPECT, s.incarnation, now)
        self._suspicions[idx] = sus
        self.suspicions_raised += 1
        self._broadcast(s)
        self._out.append(Timer(sus.deadline, TimerKind.SUSPICION, idx))

    def _suspicion_expired(self, idx: int, now: float) -> None:
        sus = self._suspicions.get(idx)
        if sus is None or now < sus.deadline or self._code(idx) != _SUSPECT \
                or self._inc[idx] != sus.incarnation:
            return
        self._bury(idx, _DEAD, Dead(self.book.addresses[idx], sus.incarnation, self.address), now)

    def _about_me(self, incarnation: int, now: float) -> None:
        """Someone says we are dead or gone: refute (a stale claim: say we are alive again)."""
        if incarnation_ahead(incarnation, self._inc[self._me]) < 0:
            self._reassert()
        elif not self._left:
            self._refute(incarnation, now)

    def _on_dead(self, d: Dead, now: float) -> None:
        """Another member says ``d.address`` is dead: an accusation cut to the floor.

        The member is buried here when our own suspicion of it runs out, which is never
        sooner than the floor after we first accused it: time enough to refute.
        """
        idx = self.book.get(d.address)
        if idx is None:
            return
        if idx == self._me:
            self._about_me(d.incarnation, now)
            return
        if self._code(idx) in (_ALIVE, _SUSPECT):
            self._on_suspect(Suspect(d.address, d.incarnation, d.accuser), now, corroborated=True)

    def _on_leave(self, lv: Leave, now: float) -> None:
        idx = self.book.get(lv.address)
        if idx is None:
            return
        if idx == self._me:
            self._about_me(lv.incarnation, now)
            return
        if self._code(idx) not in (_ALIVE, _SUSPECT):
            return
        ahead = self._plausible(lv.incarnation, idx)
        if ahead is None or ahead < 0:
            return
        self._bury(idx, _LEFT, lv, now)

    def _bury(self, idx: int, code: int, update: Update, now: float) -> None:
        self._set(idx, code, update.incarnation, now)
        self._broadcast(update)

    # --- forgetting the dead ---------------------------------------------------------
    def _reap_delay(self, idx: int, code: int) -> float:
        if code == _LEFT or idx in self._unconfirmed:
            return self.config.gossip_to_the_dead_time
        return self.config.reconnect_timeout

    def _reap(self, idx: int, now: float) -> None:
        since = self._down_since.get(idx)
        code = self._code(idx)
        if since is None or code not in (_DEAD, _LEFT):
            return
        due = since + self._reap_delay(idx, code)
        if now < due:
            self._out.append(Timer(due, TimerKind.REAP, idx))
            return
        self._forget(idx, now)

    def _forget(self, idx: int, now: float) -> None:
        """Drop a dead or left member from the table (and its name, from a private book)."""
        self._set(idx, _NONE, 0, now)
        self._heard_from(idx)  # frees its introducer's quota
        for table in (self._contacts, self._sources, self._failures):
            table.pop(idx, None)  # type: ignore[attr-defined]
        if self._owns_book:
            self.book.release(idx)
        self.reaped += 1

    # --- the view the runtime reads (same shape as StaticMembership) ---------------
    def _member(self, idx: int) -> Member:
        return Member(address=self.book.addresses[idx], peer_id=self.book.peer_ids[idx],
                      state=_TO_STATE[self._state[idx]],
                      source=self._sources.get(idx, Source.GOSSIP),
                      last_contact=self._contacts.get(idx),
                      consecutive_failures=self._failures.get(idx, 0))

    def members(self) -> list[Member]:
        """Every member this node knows of, in any state, itself excluded."""
        return [self._member(i) for i, c in enumerate(self._state) if c != _NONE and i != self._me]

    def live(self) -> list[Member]:
        """Alive and suspect members (a suspect may still be fine): the gossip partners."""
        return [self._member(i) for i, c in enumerate(self._state)
                if c in (_ALIVE, _SUSPECT) and i != self._me]

    def get(self, address: str) -> Member | None:
        idx = self.book.get(address)
        if idx is None or idx == self._me or self._code(idx) == _NONE:
            return None
        return self._member(idx)

    def state_of(self, address: str) -> MemberState | None:
        """This node's belief about ``address`` (itself included); None if unknown."""
        idx = self.book.get(address)
        if idx is None or self._code(idx) == _NONE:
            return None
        return _TO_STATE[self._state[idx]]

    def incarnation_of(self, address: str) -> int | None:
        idx = self.book.get(address)
        return None if idx is None or self._code(idx) == _NONE else self._inc[idx]

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
    def live_count(self) -> int:
        """Alive and suspect members, this node included (the n of every log n here)."""
        return self._live

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
        if idx is None or self._code(idx) == _NONE:
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
            self._set(idx, _ALIVE, 0, now)
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
        if idx is not None and self._code(idx) != _NONE:
            self._failures[idx] = self._failures.get(idx, 0) + 1
