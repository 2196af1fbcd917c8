"""msgpack encoding of the SWIM messages, with strict validation on decode.

The messages travel as the bytes payload of the membership gRPC calls (ping,
ping-req, push-pull). Every message is one msgpack array; there are no maps, so the
layout is compact and the decoder can check every position::

    [version, kind, ...fields]
      Ping      [1, 1, seq, source, target, updates]
      Ack       [1, 2, seq, source, updates]
      Nack      [1, 3, seq, source, updates]
      PingReq   [1, 4, seq, source, target, nack_after, updates]
      Gossip    [1, 5, source, updates]
      PushPull  [1, 6, source, join, reply, states]
    update      [1, address, incarnation, peer_id]     Alive
                [2, address, incarnation, accuser]     Suspect
                [3, address, incarnation, accuser]     Dead
                [4, address, incarnation]              Leave
    state       [address, peer_id, incarnation, state] state: 1 alive 2 suspect 3 dead 4 left

``from_wire`` never lets a parser exception escape: every way the bytes can be wrong
maps to a ``protocol.errors.WireError`` subclass, and sizes are bounded by the parser
(``protocol.msgpack_reader``, shared with the model-packet codec) before anything
proportional to them is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import MalformedPacket, PacketTooLarge, TruncatedPacket, UnsupportedVersion, WireError
from protocol.membership.config import MAX_INCARNATION
from protocol.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MemberEntry,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Update,
)
from protocol.membership.states import ALIVE, CODE_OF, DEAD, LEFT, STATE_OF, SUSPECT
from protocol.msgpack_reader import Fault, Kind, MsgpackError, Reader, ReadLimits, unpack

WIRE_VERSION = 1
_MAX_SEQ = 2**32 - 1
_MAX_NACK_AFTER = 3600.0

_PING, _ACK, _NACK, _PING_REQ, _GOSSIP, _PUSH_PULL = 1, 2, 3, 4, 5, 6
# An update's kind is the state code (protocol.membership.states.StateCode) of the state
# it announces, and so is a full-state row's state.


@dataclass(frozen=True)
class MembershipLimits:
    """Bounds checked while parsing; a message beyond any of them is refused."""

    # Below gRPC's default 4 MiB message; a 10,000-member push-pull is ~0.5 MB.
    max_message_bytes: int = 4 << 20
    max_updates: int = 256
    max_states: int = 100_000
    max_string: int = 256


# --- encoding ------------------------------------------------------------------------

def _update(u: Update) -> list[Any]:
    if isinstance(u, Alive):
        return [ALIVE, u.address, u.incarnation, u.peer_id]
    if isinstance(u, Suspect):
        return [SUSPECT, u.address, u.incarnation, u.accuser]
    if isinstance(u, Dead):
        return [DEAD, u.address, u.incarnation, u.accuser]
    return [LEFT, u.address, u.incarnation]


def to_wire(msg: Message) -> bytes:
    """The msgpack bytes of ``msg`` (see the module docstring for the layout)."""
    ups = [_update(u) for u in getattr(msg, "updates", ())]
    if isinstance(msg, Ping):
        body: list[Any] = [_PING, msg.seq, msg.source, msg.target, ups]
    elif isinstance(msg, Ack):
        body = [_ACK, msg.seq, msg.source, ups]
    elif isinstance(msg, Nack):
        body = [_NACK, msg.seq, msg.source, ups]
    elif isinstance(msg, PingReq):
        body = [_PING_REQ, msg.seq, msg.source, msg.target, float(msg.nack_after), ups]
    elif isinstance(msg, Gossip):
        body = [_GOSSIP, msg.source, ups]
    elif isinstance(msg, PushPull):
        states = [[e.address, e.peer_id, e.incarnation, CODE_OF[e.state]] for e in msg.states]
        body = [_PUSH_PULL, msg.source, msg.join, msg.reply, states]
    else:
        raise TypeError(f"not a membership message: {type(msg).__name__}")
    return msgpack.packb([WIRE_VERSION, *body], use_bin_type=True)


# --- decoding ------------------------------------------------------------------------

def _read_limits(limits: MembershipLimits) -> ReadLimits:
    # Maps, binaries and extensions are not part of the format: only empty ones get past
    # the reader (as msgpack's own limits of 0 let them), and the schema refuses those.
    return ReadLimits(max_str=limits.max_string, max_array=max(limits.max_states, limits.max_updates, 8),
                      max_map=0, max_bin=0, max_ext=0)


def _refusal(e: MsgpackError) -> WireError:
    """The membership refusal for a fault of the msgpack layer."""
    if e.fault is Fault.TRUNCATED:
        return TruncatedPacket("message ended before its declared contents")
    if e.fault is Fault.TRAILING:
        return MalformedPacket("trailing bytes after the message")
    if e.fault is Fault.TOO_LARGE and e.kind in (Kind.MAP, Kind.BIN, Kind.EXT):
        return MalformedPacket(f"maps, binaries and extensions are not part of the format: {e.detail}")
    if e.fault is Fault.TOO_LARGE:
        return PacketTooLarge(f"membership message field too large: {e.detail}")
    if e.fault is Fault.NOT_ARRAY:
        return MalformedPacket(f"an array was expected: {e.detail}")
    return MalformedPacket(f"not a msgpack message: {e.detail}")


def _unpack(data: bytes | memoryview, limits: MembershipLimits) -> Any:
    try:
        return unpack(data, _read_limits(limits))
    except MsgpackError as e:
        raise _refusal(e) from None


def _int(v: Any, what: str, top: int) -> int:
    if type(v) is not int or not 0 <= v <= top:
        raise MalformedPacket(f"{what} must be an integer in 0..{top}, got {v!r:.40}")
    return v


def _str(v: Any, what: str, limits: MembershipLimits, empty: bool = False) -> str:
    if type(v) is not str:
        raise MalformedPacket(f"{what} must be a string, got {type(v).__name__}")
    if not v and not empty:
        raise MalformedPacket(f"{what} must not be empty")
    if len(v) > limits.max_string:
        raise PacketTooLarge(f"{what} is longer than {limits.max_string} characters")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise MalformedPacket(f"{what} must be a boolean, got {type(v).__name__}")
    return v


def _list(v: Any, what: str, most: int) -> list[Any]:
    if type(v) is not list:
        raise MalformedPacket(f"{what} must be an array, got {type(v).__name__}")
    if len(v) > most:
        raise PacketTooLarge(f"{what} has {len(v)} entries, more than {most}")
    return v


def _updates(v: Any, limits: MembershipLimits) -> tuple[Update, ...]:
    out: list[Update] = []
    for i, u in enumerate(_list(v, "updates", limits.max_updates)):
        what = f"update {i}"
        if type(u) is not list or len(u) not in (3, 4) or type(u[0]) is not int:
            raise MalformedPacket(f"{what} must be [kind, address, incarnation, ...]")
        kind = u[0]
        if (kind == LEFT) != (len(u) == 3):
            raise MalformedPacket(f"{what}: kind {kind} has the wrong number of fields")
        addr = _str(u[1], f"{what} address", limits)
        inc = _int(u[2], f"{what} incarnation", MAX_INCARNATION)
        if kind == ALIVE:
            out.append(Alive(addr, _str(u[3], f"{what} peer id", limits, empty=True), inc))
        elif kind == SUSPECT:
            out.append(Suspect(addr, inc, _str(u[3], f"{what} accuser", limits)))
        elif kind == DEAD:
            out.append(Dead(addr, inc, _str(u[3], f"{what} accuser", limits)))
        elif kind == LEFT:
            out.append(Leave(addr, inc))
        else:
            raise MalformedPacket(f"{what}: unknown kind {kind}")
    return tuple(out)


def _state_row(r: Any, i: int, seen: set[str], limits: MembershipLimits) -> MemberEntry:
    if type(r) is not list or len(r) != 4:
        raise MalformedPacket(f"state {i} must be [address, peer_id, incarnation, state]")
    addr = _str(r[0], f"state {i} address", limits)
    if addr in seen:
        raise MalformedPacket(f"state {i}: address {addr!r} listed twice")
    seen.add(addr)
    code = r[3]
    if type(code) is not int or code not in STATE_OF:
        raise MalformedPacket(f"state {i}: unknown state {code!r:.20}")
    return MemberEntry(addr, _str(r[1], f"state {i} peer id", limits, empty=True),
                       _int(r[2], f"state {i} incarnation", MAX_INCARNATION), STATE_OF[code])


def _states(v: Any, limits: MembershipLimits) -> tuple[MemberEntry, ...]:
    seen: set[str] = set()
    return tuple([_state_row(r, i, seen, limits) for i, r in enumerate(_list(v, "states", limits.max_states))])


def _nack_after(v: Any) -> float:
    if type(v) not in (float, int) or not math.isfinite(v) or not 0.0 <= v <= _MAX_NACK_AFTER:
        raise MalformedPacket(f"nack_after must be a finite number of seconds in 0..{_MAX_NACK_AFTER:g}")
    return float(v)


_ARITY = {_PING: 6, _ACK: 5, _NACK: 5, _PING_REQ: 7, _GOSSIP: 4, _PUSH_PULL: 6}


def _decode(obj: list[Any], lim: MembershipLimits) -> Message:
    kind = obj[1]
    if type(kind) is not int or kind not in _ARITY:
        raise MalformedPacket(f"unknown membership message kind {kind!r:.20}")
    if len(obj) != _ARITY[kind]:
        raise MalformedPacket(f"message kind {kind} must have {_ARITY[kind]} fields, got {len(obj)}")
    if kind == _PING:
        return Ping(_int(obj[2], "seq", _MAX_SEQ), _str(obj[3], "source", lim),
                    _str(obj[4], "target", lim), _updates(obj[5], lim))
    if kind in (_ACK, _NACK):
        cls: Callable[..., Message] = Ack if kind == _ACK else Nack
        return cls(_int(obj[2], "seq", _MAX_SEQ), _str(obj[3], "source", lim), _updates(obj[4], lim))
    if kind == _PING_REQ:
        return PingReq(_int(obj[2], "seq", _MAX_SEQ), _str(obj[3], "source", lim),
                       _str(obj[4], "target", lim), _nack_after(obj[5]), _updates(obj[6], lim))
    if kind == _GOSSIP:
        return Gossip(_str(obj[2], "source", lim), _updates(obj[3], lim))
    return PushPull(_str(obj[2], "source", lim), _states(obj[5], lim),
                    join=_bool(obj[3], "join"), reply=_bool(obj[4], "reply"))


def _check_size(data: bytes | memoryview, limits: MembershipLimits) -> None:
    if len(data) > limits.max_message_bytes:
        raise PacketTooLarge(f"message of {len(data)} bytes exceeds {limits.max_message_bytes}")
    if len(data) == 0:
        raise TruncatedPacket("empty membership message")


def from_wire(data: bytes | memoryview, limits: MembershipLimits = MembershipLimits()) -> Message:
    """Parse and validate ``data``; raise a ``WireError`` subclass for anything wrong."""
    _check_size(data, limits)
    obj = _unpack(data, limits)
    if type(obj) is not list or len(obj) < 2:
        raise MalformedPacket("a membership message must be an array [version, kind, ...]")
    if obj[0] != WIRE_VERSION or type(obj[0]) is not int:
        raise UnsupportedVersion(f"membership wire version {obj[0]!r:.20}; this peer speaks {WIRE_VERSION}")
    return _decode(obj, limits)


# Above this size a full state is parsed and validated in steps of ROWS_PER_STEP rows:
# done at once, 66,000 rows take ~0.2-1 s of CPU, and a worker thread would not help
# (it holds the GIL, and so the event loop, for whole C calls).
STEP_ABOVE_BYTES = 64 << 10
ROWS_PER_STEP = 256


def from_wire_in_parts(data: bytes | memoryview, limits: MembershipLimits = MembershipLimits(),
                       rows: int = ROWS_PER_STEP) -> Iterator[Message]:
    """``from_wire`` one part at a time: a large full state comes out as PushPulls with
    its source and flags and the next ``rows`` rows each (every row validated before it
    is given out; a fault further on raises then), any other message as itself, whole.

    The receiver merges each part as it comes, so the rows of a forged full state of
    tens of thousands of members never all exist at once (allocating them all would
    also set off the garbage collector's full passes, which stall the whole process).
    """
    if len(data) <= STEP_ABOVE_BYTES:
        yield from_wire(data, limits)
        return
    _check_size(data, limits)
    try:
        yield from _push_pull_in_parts(data, limits, rows)
    except MsgpackError as e:
        raise _refusal(e) from None


def _push_pull_in_parts(data: bytes | memoryview, limits: MembershipLimits, rows: int) -> Iterator[Message]:
    up = Reader(data, _read_limits(limits))
    fields = up.read_array_header()
    head = [up.read() for _ in range(min(fields, 5))]
    if fields != _ARITY[_PUSH_PULL] or head[0] != WIRE_VERSION or type(head[0]) is not int \
            or head[1] != _PUSH_PULL or type(head[1]) is not int:
        yield from_wire(data, limits)  # only a full state is ever this large: the one-shot path
        return
    source, join, reply = _str(head[2], "source", limits), _bool(head[3], "join"), _bool(head[4], "reply")
    count = up.read_array_header()
    if count > limits.max_states:
        raise PacketTooLarge(f"states has {count} entries, more than {limits.max_states}")
    seen: set[str] = set()
    for start in range(0, max(count, 1), rows):
        chunk = [up.read() for _ in range(min(rows, count - start))]
        part = tuple([_state_row(r, start + i, seen, limits) for i, r in enumerate(chunk)])
        if start + rows >= count and not up.at_end:
            raise MalformedPacket("trailing bytes after the message")
        yield PushPull(source, part, join=join, reply=reply)


def from_wire_in_steps(data: bytes | memoryview, limits: MembershipLimits = MembershipLimits(),
                       rows: int = ROWS_PER_STEP) -> Generator[None, None, Message]:
    """``from_wire`` as a generator: it yields after each part of a large full state (the
    caller may let other work run between) and returns the whole message."""
    parts: list[Message] = []
    for part in from_wire_in_parts(data, limits, rows):
        parts.append(part)
        yield
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    assert isinstance(first, PushPull)
    return PushPull(first.source, tuple(row for p in parts for row in p.states),  # type: ignore[union-attr]
                    join=first.join, reply=first.reply)
