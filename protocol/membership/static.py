"""The membership view without a failure detector: static seeds plus inbound contacts.

Chosen with ``--membership static``; a member is suspected, then given up, after
repeated failed gossip exchanges. SWIM (``protocol.membership.swim``) is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.membership.states import Member, MemberState, Source


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

    def incarnation_of(self, address: str) -> int | None:
        """The static view has no incarnations (SWIM's refutation counter)."""
        return None
