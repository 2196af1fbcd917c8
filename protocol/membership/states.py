"""The membership view: its vocabulary (member states, where a member came from, the
compact state codes the SWIM member table stores, one byte a member) and
``MembershipView``, what the rest of hearsay may ask of a membership.

``StateCode`` is the one definition of those codes; the table, the membership wire
format (a push-pull row's state, an update's kind), the daemon's event log and the
simulator all use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


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
    # It answered us on a connection we opened (an ack to our probe, a reply to our
    # push-pull, an exchange we started), or it is configured: more than someone's word.
    # Partner choice caps the picks of unconfirmed members (protocol.sampling).
    confirmed: bool = True

    @property
    def live(self) -> bool:
        return self.state in (MemberState.ALIVE, MemberState.SUSPECT)


class StateCode(enum.IntEnum):
    """A member's state as the SWIM table stores it (``array("b")``) and the wire carries it."""

    NONE = 0     # not a member (never known, or forgotten)
    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4


# The codes as module constants: the machine compares codes for every message and every
# full-state row, and a module global is several times faster to read than an enum
# attribute (these are the enum members themselves, not copies of their values).
NONE, ALIVE, SUSPECT, DEAD, LEFT = (StateCode.NONE, StateCode.ALIVE, StateCode.SUSPECT,
                                    StateCode.DEAD, StateCode.LEFT)
LIVE = (ALIVE, SUSPECT)  # may still be chosen as a partner
DOWN = (DEAD, LEFT)

# Code <-> view state; NONE has no view state (the member is not in the view).
STATE_OF: dict[int, MemberState] = {ALIVE: MemberState.ALIVE, SUSPECT: MemberState.SUSPECT,
                                    DEAD: MemberState.DEAD, LEFT: MemberState.LEFT}
CODE_OF: dict[MemberState, StateCode] = {MemberState.ALIVE: ALIVE, MemberState.SUSPECT: SUSPECT,
                                        MemberState.DEAD: DEAD, MemberState.LEFT: LEFT}


class MembershipView(Protocol):
    """What the gossip engine, the admin service and the metrics use of a membership.

    Both ``Swim`` (the default) and ``StaticMembership`` (membership=static) offer it,
    so nothing outside protocol/membership/ needs to know which one runs.
    """

    def members(self) -> list[Member]: ...
    def live(self) -> list[Member]: ...
    def get(self, address: str) -> Member | None: ...
    def add_seed(self, address: str) -> None: ...
    def note_contact(self, address: str, peer_id: str, now: float, inbound: bool = False) -> Member | None: ...
    def note_failure(self, address: str, now: float) -> None: ...
    def incarnation_of(self, address: str) -> int | None: ...
