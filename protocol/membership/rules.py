"""The rules by which one SWIM node's beliefs change: SWIM's incarnation ordering for
Alive, Suspect, Dead and Leave, Lifeguard's suspicion with independent confirmations,
and the bounds on what one message from a stranger can do (see the package docstring).

Every change they make is queued for dissemination (``_broadcast``); the machine
(``protocol.membership.swim``) decides when and to whom it travels.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from protocol.membership.broadcast import BroadcastQueue
from protocol.membership.config import INC_MOD, SwimConfig, incarnation_ahead, suspicion_bounds
from protocol.membership.messages import Alive, Dead, Leave, MemberEntry, Suspect, Timer, TimerKind, Update
from protocol.membership.states import ALIVE, CODE_OF, DEAD, LEFT, LIVE, NONE, SUSPECT
from protocol.membership.suspicion import Suspicion
from protocol.membership.table import AddressBook, MemberTable


class UpdateRules(MemberTable):
    """A member table that applies membership updates and queues what changed."""

    def __init__(self, address: str, peer_id: str, *, rng: random.Random, config: SwimConfig,
                 book: AddressBook | None, track_contacts: bool) -> None:
        super().__init__(address, peer_id, rng=rng, config=config, book=book, track_contacts=track_contacts)
        self.implausible = 0         # claims further ahead than config.incarnation_window
        self._queue = BroadcastQueue(config.max_queue)
        self._awareness = 0          # Lifeguard's local-health score
        self._left = False
        self._started = False
        # Members someone said left (unverified) -> when we last asked them (_check_leave).
        self._leave_checks: dict[str, float] = {}
        self._gossiping = False
        # Counters for metrics and tests.
        self.suspicions_raised = 0
        self.refutations = 0

    def _awareness_delta(self, delta: int) -> None:
        self._awareness = min(self.config.awareness_max - 1, max(0, self._awareness + delta))

    def _broadcast(self, update: Update) -> None:
        self._queue.push(update)
        if not self._gossiping and self.config.gossip_nodes > 0 and self._started:
            self._gossiping = True
            self._out.append(Timer(self._now + self.config.gossip_interval, TimerKind.GOSSIP))

    def _merge_states(self, states: Iterable[MemberEntry], source: str, now: float) -> None:
        """Fold remote full-state rows in: alive and left as such, suspect or dead as one
        more accusation by ``source`` (memberlist merges dead as suspect, too)."""
        book, state, inc = self.book, self._state, self._inc
        for e in states:
            idx = book.get(e.address)
            code = CODE_OF[e.state]
            if idx is not None and idx < len(state) and state[idx] == code and inc[idx] == e.incarnation:
                continue  # the common case: we already agree
            if code == ALIVE:
                self._on_alive(Alive(e.address, e.peer_id, e.incarnation), now)
            elif code == LEFT:
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
        inc = (base + 1) % INC_MOD
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

    def _on_alive(self, a: Alive, now: float) -> None:
        idx = self.book.get(a.address)
        if idx == self._me:
            if incarnation_ahead(a.incarnation, self._inc[self._me]) > 0:
                self._refute(a.incarnation, now)  # a previous life of ours: overtake it
            return
        known = idx is not None and self._code(idx) != NONE
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
        self._set(idx, ALIVE, a.incarnation, now)
        self._broadcast(a)

    def _accuser_counts(self, accuser: str) -> bool:
        """Only a member we hold live can confirm a suspicion (a made-up name cannot)."""
        idx = self.book.get(accuser)
        return idx is not None and self._code(idx) in LIVE

    def _on_suspect(self, s: Suspect, now: float, corroborated: bool = False) -> None:
        idx = self.book.get(s.address)
        if idx is None:
            return
        code = self._code(idx)
        ahead = incarnation_ahead(s.incarnation, self._inc[idx])
        if code == NONE or ahead < 0:
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
        if code not in LIVE:
            return
        if code == SUSPECT and s.incarnation == self._inc[idx]:
            return
        n = self._live
        expected = self.config.suspicion_confirmations if n - 2 >= self.config.suspicion_confirmations else 0
        floor, ceiling = suspicion_bounds(n, self.config)
        sus = Suspicion(s.accuser, s.incarnation, now, expected, floor, ceiling)
        if corroborated:
            sus.corroborate()
        self._set(idx, SUSPECT, s.incarnation, now)
        self._suspicions[idx] = sus
        self.suspicions_raised += 1
        self._broadcast(s)
        self._out.append(Timer(sus.deadline, TimerKind.SUSPICION, idx))

    def _suspicion_expired(self, idx: int, now: float) -> None:
        sus = self._suspicions.get(idx)
        if sus is None or now < sus.deadline or self._code(idx) != SUSPECT \
                or self._inc[idx] != sus.incarnation:
            return
        address = self.book.addresses[idx]
        if address in self._leave_checks:  # said to be leaving, and gone quiet since: it left
            self._bury(idx, LEFT, Leave(address, sus.incarnation), now)
            return
        self._bury(idx, DEAD, Dead(address, sus.incarnation, self.address), now)

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
        if self._code(idx) in LIVE:
            self._on_suspect(Suspect(d.address, d.incarnation, d.accuser), now, corroborated=True)

    def _on_leave(self, lv: Leave, now: float) -> None:
        idx = self.book.get(lv.address)
        if idx is None:
            return
        if idx == self._me:
            self._about_me(lv.incarnation, now)
            return
        if self._code(idx) not in LIVE:
            return
        ahead = self._plausible(lv.incarnation, idx)
        if ahead is None or ahead < 0:
            return
        if lv.address != self._src and not self.config.authenticated:
            # Only a member announces its own leave (issue 14): a relay nobody vouches for
            # (no keyring, no mTLS) could be forged, so ask the member, whose answer
            # carries its Leave while it lingers.
            self._check_leave(idx, now)
            return
        self._bury(idx, LEFT, lv, now)

    def _check_leave(self, idx: int, now: float) -> None:
        """Ask member ``idx`` directly whether it left (the machine sends the message)."""

    def _bury(self, idx: int, code: int, update: Update, now: float) -> None:
        self._set(idx, code, update.incarnation, now)
        self._broadcast(update)

