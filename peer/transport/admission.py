"""Admission of inbound exchanges: how many streams, how many bytes, how fast.

An inbound ``Exchange`` has two phases with different costs. *Reading* costs a
coroutine and the bytes buffered so far, and lasts as long as the sender likes;
*processing* (decode, link replica, merge, our reply) costs CPU and a decoded model.
They are bounded separately, so streams that are still reading — honest ones on a
slow link, or a slowloris holding a hundred of them half-open — never take the
slots that complete packets need to be merged.

Reading is bounded by:

* the number of streams reading at once, in total and per connection;
* a budget of bytes buffered by incomplete packets, charged frame by frame as data
  arrives (never from a declared size: a stream that declares 200 MiB and sends
  one frame costs one frame);
* time: a pause longer than ``idle_timeout`` between frames is ``stalled``; after an
  initial allowance of ``idle_timeout``, a stream whose average rate falls below
  ``min_rate`` is ``too_slow`` (so a packet of N bytes has at most
  ``idle_timeout + N / min_rate`` seconds, and a trickle of bytes cannot stretch it).

When the stream count or the byte budget is full, the stream that has been idle
longest is shed (ended ``overloaded``) to make room, provided it has been idle for
a while (``shed_after``); an honest stream delivers its frames back to back and is
never the idlest. Only when nobody can be shed is the newcomer refused. That is what
keeps a peer gossiping under a slowloris of any size: fixed caps alone would let
``cap`` idle streams lock every honest partner out until their timeouts expire.

Idle time alone is not enough against a slowloris that keeps re-opening: its fresh
streams are never idle long, and it opens them far faster than honest partners do,
so it would win most of the room that shedding frees. Connections over which an
exchange has completed (a packet that decoded, was accepted and answered) are
therefore *trusted*: a stream on a trusted connection may shed any stream of an
untrusted one, however fresh. Honest partners keep their channel (one connection)
open between exchanges, so they earn this on their first exchange; an attacker would
have to send a valid model of the right architecture on each of its connections,
and then the per-connection cap still holds it.

Why per connection and not per IP: every peer of a test swarm (and every peer
behind one NAT) shares an address, so a per-IP cap small enough to matter would lock
honest peers out. A connection (IP:port, i.e. one gRPC channel) is one partner's;
an honest partner runs at most one exchange per link at a time (``GossipEngine``'s
link lock refuses a second one as busy once the sender is known) plus a bootstrap,
so a handful per connection is ample. An attacker opening many connections is
held by the total cap and the shedding above instead.

``Admission`` is the pure accounting (time comes in as arguments); ``Gate`` wraps it
for asyncio: a context manager per stream, a paced frame iterator, and a semaphore
for processing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from protocol.errors import Refusal

if TYPE_CHECKING:
    from peer.runtime.config import PeerConfig


class Overloaded(Refusal):
    """Too many exchanges at once (in total), or this one was shed to make room."""

    reason = "overloaded"


class TooManyFromPeer(Refusal):
    """Too many exchanges at once over one connection."""

    reason = "too_many_from_peer"


class BufferBudget(Refusal):
    """Incomplete inbound packets already hold all the bytes this peer buffers."""

    reason = "buffer_budget"


class Stalled(Refusal):
    """No frame for longer than the idle timeout."""

    reason = "stalled"


class ReplyUnread(Refusal):
    """The caller did not read our reply within its deadline (it granted no flow-control window)."""

    reason = "reply_unread"


class TooSlow(Refusal):
    """Frames keep coming, but slower on average than the minimum rate."""

    reason = "too_slow"


@dataclass(frozen=True)
class AdmissionLimits:
    """The limits, in bytes and seconds (peer/runtime/config.py documents the options they come from)."""

    max_streams: int = 128
    max_per_connection: int = 8
    buffer_bytes: int = 512 << 20
    max_processing: int = 4
    idle_timeout: float = 5.0
    min_rate: float = 256 << 10  # bytes per second; 0 = no rate limit
    # Replies being written at once (each holds a whole model until the caller has read it).
    max_replies: int = 16

    def __post_init__(self) -> None:
        if min(self.max_streams, self.max_per_connection, self.max_processing, self.max_replies) < 1:
            raise ValueError("stream, processing and reply limits must be at least 1")
        if self.buffer_bytes < 1 or self.idle_timeout <= 0 or self.min_rate < 0:
            raise ValueError("buffer_bytes and idle_timeout must be positive, min_rate >= 0")

    @property
    def shed_after(self) -> float:
        # A quarter of the idle timeout: long enough that a sender merely scheduled late on
        # a loaded machine keeps its stream, short enough that an attacker's idle streams
        # make room well before they would time out on their own.
        return self.idle_timeout / 4

    def reply_deadline(self, nbytes: int) -> float:
        """Seconds a caller has to read a reply of ``nbytes``: the reading phase's allowance."""
        return self.idle_timeout + (nbytes / self.min_rate if self.min_rate > 0 else 0.0)


@dataclass(eq=False)
class Ticket:
    """One inbound stream's account. ``shed`` names why it was ended from outside."""

    connection: str
    opened: float
    last_activity: float
    trusted: bool = False
    received: int = 0
    reading: bool = True
    shed: Refusal | None = None
    # Set by the asyncio side: wakes the stream's reader when it is shed.
    wake: Callable[[], None] | None = field(default=None, repr=False)


class Admission:
    """Stream slots and the byte budget of incomplete inbound packets."""

    # Connections remembered as trusted (least recently completed forgotten first).
    MAX_TRUSTED = 1024

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._reading: list[Ticket] = []
        self._per_connection: dict[str, int] = {}
        self._trusted: OrderedDict[str, None] = OrderedDict()
        self.buffered = 0  # bytes charged to tickets not yet closed

    def trust(self, connection: str) -> None:
        """An exchange over ``connection`` completed: its later streams get priority."""
        self._trusted[connection] = None
        self._trusted.move_to_end(connection)
        while len(self._trusted) > self.MAX_TRUSTED:
            self._trusted.popitem(last=False)

    def distrust(self, connection: str) -> None:
        """``connection`` is trusted no more (an early answer of ours went for nothing:
        peer/transport/answering.py)."""
        self._trusted.pop(connection, None)

    @property
    def reading(self) -> int:
        return len(self._reading)

    def _shed_one(self, now: float, why: Refusal, asking: Ticket) -> Ticket | None:
        """End the reading stream idle longest, if it has been idle ``shed_after`` (or, for
        a trusted ``asking`` stream, is untrusted); never ``asking`` itself."""
        others = [t for t in self._reading if t is not asking]
        idle = [t for t in others if not t.trusted] if asking.trusted else []
        if not idle:
            idle = [t for t in others if now - t.last_activity >= self.limits.shed_after]
        if not idle:
            return None
        victim = min(idle, key=lambda t: t.last_activity)
        victim.shed = why
        self._stop_reading(victim)
        self.buffered -= victim.received
        victim.received = 0
        return victim

    def open(self, connection: str, now: float) -> tuple[Ticket, list[Ticket]]:
        """A slot for a new stream on ``connection``, and the streams shed to make room.
        Raises ``TooManyFromPeer`` or ``Overloaded``."""
        if self._per_connection.get(connection, 0) >= self.limits.max_per_connection:
            raise TooManyFromPeer(f"{connection} already has {self.limits.max_per_connection} exchanges open")
        shed: list[Ticket] = []
        ticket = Ticket(connection, opened=now, last_activity=now, trusted=connection in self._trusted)
        if len(self._reading) >= self.limits.max_streams:
            victim = self._shed_one(now, Overloaded(f"shed: idle while {self.limits.max_streams} streams were open"),
                                    ticket)
            if victim is None:
                raise Overloaded(f"{self.limits.max_streams} inbound exchanges are already receiving")
            shed.append(victim)
        self._reading.append(ticket)
        self._per_connection[connection] = self._per_connection.get(connection, 0) + 1
        return ticket, shed

    def arrived(self, ticket: Ticket, nbytes: int, now: float) -> list[Ticket]:
        """Charge a frame of ``nbytes`` to ``ticket`` before it is buffered; returns the
        streams shed to make room. Raises ``BufferBudget`` when nobody can be shed."""
        shed: list[Ticket] = []
        while self.buffered + nbytes > self.limits.buffer_bytes:
            victim = self._shed_one(now, Overloaded("shed: idle while the inbound buffer budget was full"),
                                    ticket)
            if victim is None:
                raise BufferBudget(f"incomplete inbound packets hold {self.buffered} of "
                                   f"{self.limits.buffer_bytes} bytes")
            shed.append(victim)
        ticket.received += nbytes
        ticket.last_activity = now
        self.buffered += nbytes
        return shed

    def deadline(self, ticket: Ticket) -> tuple[float, Refusal]:
        """When the next frame must have arrived by, and the refusal if it has not."""
        lim = self.limits
        idle = ticket.last_activity + lim.idle_timeout
        if lim.min_rate <= 0:
            return idle, Stalled(f"no frame for {lim.idle_timeout:g} s")
        pace = ticket.opened + lim.idle_timeout + ticket.received / lim.min_rate
        if idle <= pace:
            return idle, Stalled(f"no frame for {lim.idle_timeout:g} s")
        return pace, TooSlow(f"{ticket.received} bytes in {pace - ticket.opened:.1f} s: below "
                             f"{lim.min_rate / 1024:g} KiB/s")

    def _stop_reading(self, ticket: Ticket) -> None:
        if ticket.reading:
            ticket.reading = False
            self._reading.remove(ticket)
            left = self._per_connection[ticket.connection] - 1
            if left:
                self._per_connection[ticket.connection] = left
            else:
                del self._per_connection[ticket.connection]

    def done_reading(self, ticket: Ticket) -> None:
        """The packet is complete: free the stream slot (its bytes stay charged until close)."""
        self._stop_reading(ticket)

    def close(self, ticket: Ticket) -> None:
        """The stream is over: free its slot and its bytes. Idempotent."""
        self._stop_reading(ticket)
        self.buffered -= ticket.received
        ticket.received = 0


F = TypeVar("F")
T = TypeVar("T")


def _size(frame: object) -> int:
    data = getattr(frame, "data", b"")
    return data.nbytes if isinstance(data, memoryview) else len(data)


class _Paced(Generic[F]):
    """``frames`` with the ticket's deadlines enforced and each frame charged before it is
    handed on (so the caller only ever buffers bytes the budget allowed)."""

    def __init__(self, gate: Gate, ticket: Ticket, frames: AsyncIterable[F]) -> None:
        self._gate = gate
        self._ticket = ticket
        self._frames = aiter(frames)

    def __aiter__(self) -> _Paced[F]:
        return self

    async def __anext__(self) -> F:
        ticket = self._ticket
        accounts = self._gate.accounts
        loop = asyncio.get_running_loop()
        when, expired = accounts.deadline(ticket)
        try:
            async with asyncio.timeout_at(when) as timeout:
                ticket.wake = lambda: timeout.reschedule(loop.time())
                frame = await anext(self._frames)
        except TimeoutError:
            raise ticket.shed or expired from None
        finally:
            ticket.wake = None
        if ticket.shed is not None:  # shed while this frame was being delivered
            raise ticket.shed
        self._gate.shed_now(accounts.arrived(ticket, _size(frame), loop.time()))
        return frame


class Gate:
    """``Admission`` on the event loop's clock, plus the processing semaphore."""

    def __init__(self, limits: AdmissionLimits = AdmissionLimits()) -> None:
        self.accounts = Admission(limits)
        self.limits = limits
        self._processing = asyncio.Semaphore(limits.max_processing)
        self.shed = 0  # streams ended to make room
        # Replies not yet delivered (peer/transport/grpc_transport.py releases them when the call ends).
        self._replies: dict[object, None] = {}

    def shed_now(self, tickets: list[Ticket]) -> None:
        """Wake the readers of streams the accounts just shed, so they end (and free) now."""
        self.shed += len(tickets)
        for t in tickets:
            if t.wake is not None:
                t.wake()

    @asynccontextmanager
    async def stream(self, connection: str) -> AsyncIterator[Ticket]:
        """A reading slot for one inbound stream, released (with its bytes) on exit."""
        ticket, shed = self.accounts.open(connection, asyncio.get_running_loop().time())
        self.shed_now(shed)
        try:
            yield ticket
        finally:
            self.accounts.close(ticket)

    def paced(self, ticket: Ticket, frames: AsyncIterable[F]) -> AsyncIterator[F]:
        return _Paced(self, ticket, frames)

    @asynccontextmanager
    async def processing(self, ticket: Ticket) -> AsyncIterator[None]:
        """Leave the reading phase and wait for one of the ``max_processing`` slots. A body
        that completes (no exception: the packet was accepted) trusts the connection."""
        self.accounts.done_reading(ticket)
        async with self._processing:
            yield
        self.accounts.trust(ticket.connection)


    async def computing(self, work: Awaitable[T]) -> T:
        """``work`` awaited in a processing slot alone (no reading phase ends, no trust earned):
        the work around an exchange, an early reply's making and the merge after the reply."""
        async with self._processing:
            return await work

    @property
    def replying(self) -> int:
        return len(self._replies)

    def reply_slot(self) -> Callable[[], None]:
        """Take one of the ``max_replies`` reply slots, or raise ``Overloaded``; returns the
        release (idempotent). Taken before the reply is computed, so a refused exchange costs
        no model-sized buffer, and released only when the call is over (the transport's done
        callback), not when our write returns: a reply stuck behind a caller's flow control
        stays queued inside gRPC until the call ends, so it must keep holding its slot."""
        if len(self._replies) >= self.limits.max_replies:
            raise Overloaded(f"{self.limits.max_replies} replies are still being delivered")
        key = object()
        self._replies[key] = None
        return lambda: self._replies.pop(key, None)

    async def write_reply(self, frames: Iterable[F], write: Callable[[F], Awaitable[None]], nbytes: int) -> None:
        """Write ``frames`` one by one within ``reply_deadline(nbytes)``; ``ReplyUnread`` when the
        caller does not read them in time. gRPC's write of a message completes once HTTP/2 flow
        control let it out: a caller that never grants window would hold it for good."""
        try:
            async with asyncio.timeout(self.limits.reply_deadline(nbytes)):
                for frame in frames:
                    await write(frame)
        except TimeoutError:
            raise ReplyUnread(f"the caller did not read {nbytes} reply bytes within "
                              f"{self.limits.reply_deadline(nbytes):.1f} s") from None


def limits_from_config(config: PeerConfig) -> AdmissionLimits:
    """The inbound limits of ``config``'s documented options (peer/runtime/config.py)."""
    return AdmissionLimits(
        max_streams=config.max_inbound_streams, max_per_connection=config.max_streams_per_connection,
        buffer_bytes=int(config.inbound_buffer_mb * (1 << 20)), max_processing=config.max_inbound_processing,
        idle_timeout=config.stream_idle_timeout, min_rate=config.stream_min_rate_kb * 1024)
