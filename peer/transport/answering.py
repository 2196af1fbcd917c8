"""Answering while the question still arrives: the callee's reply streamed during the request.

An exchange is a request (the caller's model) and a reply (ours). The reply depends on the
request's header alone, so the servicer (peer.transport.grpc_transport) can open the answer on
the request's first frame (``Answering.open_early``, peer/runtime/inbound.py) and stream the reply
while the request's tail still arrives, over the same HTTP/2 stream, both directions at once.
The reply's last frame waits until the whole request is taken (``Answer.finish``): until then
the caller cannot have the whole reply, so it never applies a reply to a request we refused.

What keeps this from being a lever for a stranger:

- **Never ahead of the request.** The reply's bytes sent never exceed the request's bytes
  received (``Arrivals``): a header does not buy a model, and nobody gets more bytes than they
  sent until their request is taken. A small request (a delta) with a large reply (a keyframe)
  streams the rest once the request is taken.
- **Trusted connections only.** A stream opens early only on a connection over which an
  exchange already completed (peer/transport/admission.py), and with no cluster keyring (its tag
  covers the whole request and is checked before any of it is believed). A connection whose
  early answer is then abandoned (the request refused, cut or stalled) loses that trust, so it
  costs a valid exchange to make us compute a reply for nothing once.

When it pays: only across a link. A caller on this very machine (a loopback address, or one of
this machine's own) shares our cores and memory bandwidth, and the two directions at once only
split them (on 2 shared cores the transfer of two 100 MB keyframes took 333 ms against 200 ms
one after the other; bench/RESULTS.md, "Issue 12, session 12"). Across a link each direction
has a wire of its own, and the push-pull took 0.5-0.6x of the time. ``GossipServicer.early``
says which callers are answered early (tests set "always").
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from peer.transport.admission import ReplyUnread
from peer.transport.frames import RawFrame, to_raw_frames
from peer.transport.identity import Caller
from protocol.wire import Buffer, packet_size


class LocalHosts:
    """Whether an IP is one of this machine's own (loopback, or bindable here), remembered."""

    def __init__(self, capacity: int = 1024) -> None:
        self._known: dict[str, bool] = {}
        self._capacity = capacity

    def __contains__(self, host: str) -> bool:
        if not host:
            return True  # in-process or a unix socket: this machine
        known = self._known.get(host)
        if known is None:
            known = _is_local(host)
            if len(self._known) >= self._capacity:
                self._known.clear()
            self._known[host] = known
        return known


def _is_local(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))  # only an address of this machine can be bound
    except OSError:
        return False
    return True


class Answer(Protocol):
    """One inbound exchange between its steps (peer.runtime.inbound.InboundExchange)."""

    reply: Buffer | Sequence[Buffer]

    async def finish(self, packet: memoryview) -> None: ...   # take the whole request, or raise Refusal
    async def settle(self) -> None: ...                      # after the reply: the merge
    async def abandon(self) -> None: ...                     # not taken: drop our reply


class Answering(Protocol):
    """What answers inbound exchanges (``peer.runtime.gossip.GossipEngine``)."""

    def open_early(self, head: Buffer, caller: Caller) -> Awaitable[Answer | None] | None: ...
    async def open_whole(self, packet: memoryview, caller: Caller) -> Answer: ...


# handler(packet, caller) -> reply: a whole packet in, the reply out (tests, benchmarks).
InboundHandler = Callable[[memoryview, Caller], Awaitable[Buffer | Sequence[Buffer]]]


class _WholeAnswer:
    """A plain handler's answer: the reply made once the whole packet is in."""

    def __init__(self, handle: InboundHandler, caller: Caller) -> None:
        self._handle, self._caller = handle, caller
        self.reply: Buffer | Sequence[Buffer] = b""

    async def finish(self, packet: memoryview) -> None:
        self.reply = await self._handle(packet, self._caller)

    async def settle(self) -> None:
        return None

    async def abandon(self) -> None:
        return None


class Plain:
    """A plain ``InboundHandler`` as an ``Answering`` that never answers early."""

    def __init__(self, handle: InboundHandler) -> None:
        self._handle = handle

    def open_early(self, head: Buffer, caller: Caller) -> None:
        return None

    async def open_whole(self, packet: memoryview, caller: Caller) -> Answer:
        return _WholeAnswer(self._handle, caller)


def answering(handle: InboundHandler | Answering) -> Answering:
    return handle if hasattr(handle, "open_whole") else Plain(handle)  # type: ignore[arg-type]


class Arrivals:
    """How many bytes of the request have arrived; wakes the reply's writer as they do."""

    def __init__(self) -> None:
        self.bytes = 0
        self.whole = False  # the request has ended (read whole, or failed)
        self._wake: asyncio.Event = asyncio.Event()

    async def counting(self, frames: AsyncIterable[RawFrame]) -> AsyncIterator[RawFrame]:
        try:
            async for frame in frames:
                self.bytes += packet_size(frame.data)
                self._wake.set()
                yield frame
        finally:
            self.end()

    def end(self) -> None:
        self.whole = True
        self._wake.set()

    async def reach(self, n: int) -> bool:
        """Wait until ``n`` bytes have arrived: True; False once the request ended short of it."""
        while self.bytes < n:
            if self.whole:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True


class EarlyReply:
    """A reply written while its request arrives, never ahead of it, all but its last frame.

    ``opening`` resolves to the answer (None: not answered early). ``answer()`` waits for it
    while the writing goes on; ``stop`` ends the writing and gives the frames still to send
    (frames go in order, so the rest follows whatever went). ``frame_deadline(n)``: seconds
    the caller has to take a frame of ``n`` bytes (admission's reply deadline): the writer
    raises ``TimeoutError`` past it."""

    def __init__(self, opening: Awaitable[Answer | None], write: Callable[[RawFrame], Awaitable[None]],
                 arrivals: Arrivals, frame_deadline: Callable[[int], float]) -> None:
        self._write, self._arrivals, self._frame_deadline = write, arrivals, frame_deadline
        self._stopping = False
        self.opened: Answer | None = None
        self.written = 0  # reply bytes sent so far
        self._answer: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._run(opening))

    async def _run(self, opening: Awaitable[Answer | None]) -> list[RawFrame]:
        try:
            answer = await opening
        except BaseException as e:
            self._answer.set_exception(e)
            raise
        self.opened = answer
        self._answer.set_result(answer)
        if answer is None:
            return []
        frames = list(to_raw_frames(answer.reply))
        done = 0
        for frame in frames[:-1]:
            n = packet_size(frame.data)
            if self._stopping:
                break
            if not await self._arrivals.reach(self.written + n):
                # The request is whole and ends inside this frame: send up to its size (the
                # frame split there), so only what the reply has beyond it waits for the request
                # to be taken, not a whole frame more.
                cut = self._arrivals.bytes - self.written
                if cut > 0 and not self._stopping:
                    data = memoryview(frame.data).cast("B")
                    await self._send(RawFrame(data[:cut]))
                    frames[done] = RawFrame(data[cut:])
                break
            await self._send(frame)
            done += 1
        return frames[done:]

    async def _send(self, frame: RawFrame) -> None:
        n = packet_size(frame.data)
        try:
            async with asyncio.timeout(self._frame_deadline(n)):
                await self._write(frame)
        except TimeoutError:
            raise ReplyUnread(f"the caller did not read a {n}-byte reply frame within "
                              f"{self._frame_deadline(n):.1f} s") from None
        self.written += n

    async def answer(self) -> Answer | None:
        """The answer, once opened (the reply may still be being written)."""
        return await asyncio.shield(self._answer)

    async def stop(self) -> list[RawFrame]:
        """Stop writing (after the frame under way); the frames not yet sent. Raises what the
        writing raised."""
        self._stopping = True
        self._arrivals.end()
        return await self._task

    async def cancel(self) -> None:
        """The exchange failed: stop writing, and abandon the answer if one was opened."""
        try:
            await self.stop()
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - failing already
            pass
        if self._answer.done() and not self._answer.cancelled():
            self._answer.exception()  # retrieved: an opening that failed is this failure's, not a stray one
        if self.opened is not None:
            await self.opened.abandon()
