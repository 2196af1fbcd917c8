"""The SWIM messages, the updates they piggyback, and the machine's outputs.

Plain frozen dataclasses: ``protocol.membership.wire`` turns them into bytes and back,
the machine (``protocol.membership.swim``) consumes and produces them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from protocol.membership.states import MemberState

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
