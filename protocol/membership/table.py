"""The SWIM member table: who one node knows of, in what state, and how members get in
and out of it.

Names live in an ``AddressBook`` (address <-> index); a node's beliefs are two flat
arrays indexed the same way (a one-byte ``StateCode`` and an incarnation per member)
plus small side tables for the few members that need more (suspicions, contacts,
members admitted on hearsay). ``MemberTable._set`` is the one place a member's state
changes. The rules that decide those changes are ``protocol.membership.rules``; the
machine that probes and gossips is ``protocol.membership.swim``.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Iterable

from protocol.membership.config import SwimConfig
from protocol.membership.messages import MemberEntry, Output, Timer, TimerKind
from protocol.membership.states import (
    ALIVE,
    DEAD,
    DOWN,
    LEFT,
    LIVE,
    NONE,
    STATE_OF,
    SUSPECT,
    Member,
    MemberState,
    Source,
    StateCode,
)
from protocol.membership.suspicion import Suspicion

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
        # Full-state snapshots by table content (see MemberTable._snapshot_states).
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
            row = MemberEntry(self.addresses[idx], key[3], incarnation, STATE_OF[code])
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


_CODES = tuple(StateCode)  # StateCode by value, without the enum's call overhead

# Called as observer(node, subject_index, old_code, new_code, now) on every state change
# (node: the Swim machine); the simulator counts detections and false deaths with it.
Observer = Callable[["MemberTable", int, StateCode, StateCode, float], None]


class MemberTable:
    """One node's member table and the view the runtime reads from it (the same shape
    as ``StaticMembership``: ``members()``, ``live()``, ``get()``)."""

    def __init__(self, address: str, peer_id: str, *, rng: random.Random, config: SwimConfig,
                 book: AddressBook | None, track_contacts: bool) -> None:
        self.address = address
        self.peer_id = peer_id
        self.config = config
        self.rng = rng
        self.book = book if book is not None else AddressBook()
        self.track_contacts = track_contacts
        self.observer: Observer | None = None
        self._me = self.book.intern(address)
        if peer_id:
            self.book.set_peer_id(self._me, peer_id)
        self._state = array("b")
        self._inc = array("I")
        self._ensure(self._me)
        self._state[self._me] = ALIVE
        self._live = 1               # members alive or suspect, this node included
        self._members = 0            # members in any state, this node excluded
        self.refused_members = 0     # new members ignored because of config.max_members
        self.refused_hearsay = 0     # ... because their introducer used up its hearsay quota
        # Members admitted on someone else's word and not heard from since: member ->
        # who introduced it; and per introducer, how many such members it has here.
        self._unconfirmed: dict[int, str] = {}
        self._introduced: dict[str, int] = {}
        self._down_since: dict[int, float] = {}  # dead or left members: since when
        self._owns_book = book is None  # a private book may recycle the names it forgets
        # Who the message being handled came from, and whether its claims are trusted
        # (our own decisions, a seed's answer to our join): read by _admit.
        self._src = address
        self._trusted = True
        self._dead: set[int] = set()  # DEAD (not LEFT) members: reconnect candidates
        self._suspicions: dict[int, Suspicion] = {}
        self._version = 0
        self._snapshot: tuple[int, tuple[MemberEntry, ...]] | None = None
        self._contacts: dict[int, float] = {}
        self._sources: dict[int, Source] = {}
        self._failures: dict[int, int] = {}
        # What the entry point being handled asks the runtime to do (see _begin).
        self._out: list[Output] = []
        self._now = 0.0
        self.reaped = 0

    # --- compact table -------------------------------------------------------------
    def _ensure(self, idx: int) -> None:
        grow = idx + 1 - len(self._state)
        if grow > 0:
            self._state.frombytes(bytes(grow))
            self._inc.frombytes(bytes(4 * grow))

    def _code(self, idx: int) -> int:
        return self._state[idx] if idx < len(self._state) else NONE

    def preload(self, addresses: Iterable[str], incarnation: int = 0) -> None:
        """Know ``addresses`` as alive without any message (tests, a formed cluster).

        A restarting daemon should not use this for its saved member list: those are
        seeds to join through (``add_seed``), since any of them may have died meanwhile.
        """
        for i in {self.book.intern(a) for a in addresses}:
            if i == self._me:
                continue
            self._ensure(i)
            if self._state[i] not in LIVE:
                self._live += 1
            if self._state[i] == NONE:
                self._members += 1
            self._down_since.pop(i, None)
            self._dead.discard(i)
            self._state[i] = ALIVE
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
        was_live = old in LIVE
        is_live = code in LIVE
        self._live += is_live - was_live
        if idx != self._me:
            self._members += (code != NONE) - (old != NONE)
        if code == DEAD:
            self._dead.add(idx)
        elif old == DEAD:
            self._dead.discard(idx)
        if code != SUSPECT:
            self._suspicions.pop(idx, None)
        if code in DOWN and old not in DOWN and idx != self._me:
            self._down_since[idx] = now
            self._out.append(Timer(now + self._reap_delay(idx, code), TimerKind.REAP, idx))
        elif code not in DOWN:
            self._down_since.pop(idx, None)
        self._state[idx] = code
        self._inc[idx] = incarnation
        self._version += 1
        if self.observer is not None and old != code:
            self.observer(self, idx, _CODES[old], _CODES[code], now)

    def state_code(self, idx: int) -> StateCode:
        """The state this node holds for the member at book index ``idx`` (NONE: not a member)."""
        return _CODES[self._code(idx)]

    # --- outputs, sampling, the full state ----------------------------------------------
    def _begin(self, now: float) -> list[Output]:
        """Start handling an entry point at ``now``: its outputs go to a fresh list."""
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
            states = tuple([entry(i, inc[i], c) for i, c in enumerate(self._state) if c != NONE])
            if len(book.snapshots) >= book.SNAPSHOTS_KEPT:
                del book.snapshots[next(iter(book.snapshots))]
            book.snapshots[key] = states
        if len(states) <= self._SNAPSHOT_CACHE_MAX:
            self._snapshot = (self._version, states)
        return states

    # --- admission: who may enter the table ------------------------------------------
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

    # --- forgetting the dead ---------------------------------------------------------
    def _reap_delay(self, idx: int, code: int) -> float:
        if code == LEFT or idx in self._unconfirmed:
            return self.config.gossip_to_the_dead_time
        return self.config.reconnect_timeout

    def _reap(self, idx: int, now: float) -> None:
        since = self._down_since.get(idx)
        code = self._code(idx)
        if since is None or code not in DOWN:
            return
        due = since + self._reap_delay(idx, code)
        if now < due:
            self._out.append(Timer(due, TimerKind.REAP, idx))
            return
        self._forget(idx, now)

    def _forget(self, idx: int, now: float) -> None:
        """Drop a dead or left member from the table (and its name, from a private book)."""
        self._set(idx, NONE, 0, now)
        self._heard_from(idx)  # frees its introducer's quota
        for table in (self._contacts, self._sources, self._failures):
            table.pop(idx, None)  # type: ignore[attr-defined]
        if self._owns_book:
            self.book.release(idx)
        self.reaped += 1

    # --- the view the runtime reads (same shape as StaticMembership) ---------------
    def _member(self, idx: int) -> Member:
        return Member(address=self.book.addresses[idx], peer_id=self.book.peer_ids[idx],
                      state=STATE_OF[self._state[idx]],
                      source=self._sources.get(idx, Source.GOSSIP),
                      last_contact=self._contacts.get(idx),
                      consecutive_failures=self._failures.get(idx, 0),
                      confirmed=idx not in self._unconfirmed)

    def members(self) -> list[Member]:
        """Every member this node knows of, in any state, itself excluded."""
        return [self._member(i) for i, c in enumerate(self._state) if c != NONE and i != self._me]

    def live(self) -> list[Member]:
        """Alive and suspect members (a suspect may still be fine): the gossip partners."""
        return [self._member(i) for i, c in enumerate(self._state)
                if c in LIVE and i != self._me]

    def get(self, address: str) -> Member | None:
        idx = self.book.get(address)
        if idx is None or idx == self._me or self._code(idx) == NONE:
            return None
        return self._member(idx)

    def state_of(self, address: str) -> MemberState | None:
        """This node's belief about ``address`` (itself included); None if unknown."""
        idx = self.book.get(address)
        if idx is None or self._code(idx) == NONE:
            return None
        return STATE_OF[self._state[idx]]

    def incarnation_of(self, address: str) -> int | None:
        idx = self.book.get(address)
        return None if idx is None or self._code(idx) == NONE else self._inc[idx]

    @property
    def live_count(self) -> int:
        """Alive and suspect members, this node included (the n of every log n here)."""
        return self._live
