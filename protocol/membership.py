"""The membership view: who this peer believes is in the swarm, and in what state.

This is the interface the runtime and partner sampling depend on. ``StaticMembership``
fills it from static seeds and inbound contacts and gives up on a member after
repeated failures; the SWIM + Lifeguard state machine replaces its failure detection
behind the same methods. Pure: every method takes ``now`` instead of reading a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
