"""gRPC transport for gossip: the ``Exchange`` server side and the client side.

The transport moves bytes and maps errors; what the bytes mean is decided by the
exchange handler (``peer.runtime.gossip``), so the in-memory transport of the simulator can
drive the same handler.
"""

from __future__ import annotations

import asyncio
import mmap
import resource
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc
from peer.transport import admission
from peer.transport import answering as answering_module
from peer.transport.admission import Gate
from peer.transport.answering import Answer, Answering, Arrivals, EarlyReply, LocalHosts
from peer.transport.errors import PartnerGone, exchange_error
from peer.transport.channels import STREAM_OPTIONS, ChannelPool
from peer.transport.identity import Caller, Impersonation, host_of_peer
from peer.transport.frames import (
    PACKET_BYTES_KEY,
    Buffer,
    RawFrame,
    packet_size,
    parse_declared,
    parse_frame,
    read_packet,
    serialize_frame,
    to_frames,
    to_raw_frames,
)
from protocol import errors, replay
from protocol.deadlines import Budget
from protocol.keyring import EXCHANGE_REPLY, EXCHANGE_REQUEST, TAG_METADATA_KEY, Keyring, Unauthenticated
from protocol.membership.wire import MembershipLimits
from protocol.wire import FRAME_BYTES

EXCHANGE_METHOD = "/hearsay.v1.Gossip/Exchange"

# What the callee answers for each kind of refused packet.
STATUS_FOR: dict[type[errors.Refusal], grpc.StatusCode] = {
    errors.FingerprintMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnsupportedVersion: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PacketTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Admission (peer/transport/admission.py): the peer is full, or the stream was too slow.
    admission.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    admission.TooManyFromPeer: grpc.StatusCode.RESOURCE_EXHAUSTED,
    admission.BufferBudget: grpc.StatusCode.RESOURCE_EXHAUSTED,
    admission.Stalled: grpc.StatusCode.DEADLINE_EXCEEDED,
    admission.TooSlow: grpc.StatusCode.DEADLINE_EXCEEDED,
    admission.ReplyUnread: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,  # no valid cluster HMAC (protocol/keyring.py)
    Impersonation: grpc.StatusCode.PERMISSION_DENIED,  # claims an address its connection cannot speak for
    # The replay guard (protocol/replay.py): a link update this peer already took is ALREADY_EXISTS;
    # an older model on the same link epoch is FAILED_PRECONDITION (the sender must restart
    # the link, i.e. send a keyframe in a new epoch, before it is heard again).
    replay.Replayed: grpc.StatusCode.ALREADY_EXISTS,
    replay.Stale: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Banned: grpc.StatusCode.PERMISSION_DENIED,  # reputation below the ban threshold (protocol/reputation.py)
}


def status_for(error: errors.Refusal) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


# handler(packet, caller) -> reply packet. The packet is the reassembly buffer (a writable
# memoryview handed over to the handler, read in place by protocol.wire); the caller is what the
# connection proves (peer/transport/identity.py); the reply is bytes-like, or a sequence
# of buffers (protocol.wire.encode_packet_parts) sent one after the other. Raises a protocol.errors.Refusal.
# An ``Answering`` (peer/transport/answering.py: the engine itself) may stand in its place: it answers
# in steps, so that the reply travels while the request still arrives.
InboundHandler = answering_module.InboundHandler
# on_head(first frame's bytes, caller): called while the rest of a packet is still arriving
# (peer.runtime.keyframe_room makes room for a keyframe then); must not keep the bytes. It may
# return a mapping to reassemble the packet into (frames.read_packet).
HeadHook = Callable[[Buffer, Caller], mmap.mmap | None]
KeyringSource = Callable[[], Keyring]


class GossipServicer(gossip_pb2_grpc.GossipServicer):
    """The ``Exchange`` method. Registered with ``add_to_server`` it reads and writes
    frames without protobuf copies; registered with the generated
    ``gossip_pb2_grpc.add_GossipServicer_to_server`` it speaks ``gossip_pb2.Frame``
    objects. The bytes on the wire are the same either way.

    ``keyring`` (protocol/keyring.py): every request must carry a valid tag, checked
    before the packet is decoded, and every reply is signed. ``certificate_of`` maps the
    gRPC peer string of a connection from the TLS front to the caller's certificate.
    ``on_head`` (``HeadHook``) sees each packet's first frame before the rest is read.
    """

    def __init__(self, handle: InboundHandler | Answering, max_packet_bytes: int,
                 on_rejected: Callable[[errors.Refusal], None], gate: Gate | None = None,
                 keyring: KeyringSource | None = None, certificate_of: Callable[[str], str] | None = None,
                 on_head: HeadHook | None = None, on_answered_early: Callable[[int], None] | None = None) -> None:
        self._answering = answering_module.answering(handle)
        self._on_answered_early = on_answered_early  # (reply bytes sent before the request was whole)
        self._on_head = on_head
        self._max_packet_bytes = max_packet_bytes
        self._on_rejected = on_rejected
        # Stream slots, buffer budget, timeouts and processing slots (peer/transport/admission.py).
        self.gate = gate or Gate()
        self.keyring = keyring
        self.certificate_of = certificate_of
        self.raw_frames = False  # set by add_to_server
        self._settling: set[asyncio.Future[None]] = set()  # merges after the reply, held until done
        # Requests answered while they arrived (peer/transport/answering.py), and the reply bytes
        # that had gone when the request was whole.
        self.answered_early = 0
        self.early_reply_bytes = 0
        # Which callers are answered while their request arrives: "remote" (on another machine),
        # "always" (tests: loopback too), "never".
        self.early = "remote"
        self._local_hosts = LocalHosts()

    def answers_early(self, caller: Caller) -> bool:
        """Whether ``caller`` may be answered while its request arrives (see ``early``)."""
        return self.early == "always" or (self.early == "remote" and caller.host not in self._local_hosts)

    def _caller(self, context: grpc.aio.ServicerContext, authenticated: bool) -> Caller:
        peer = context.peer()
        certificate = self.certificate_of(peer) if self.certificate_of is not None else ""
        return Caller(connection=peer, host=host_of_peer(peer), certificate=certificate,
                      authenticated=authenticated)

    async def _answer(self, request_iterator: AsyncIterator[gossip_pb2.Frame], context: grpc.aio.ServicerContext
                      ) -> tuple[Answer, list[RawFrame] | None]:
        """Read the packet under the gate's limits, answer it in a processing slot; the answer
        (taken: its reply may go) and, when it was answered early, the reply's frames not yet sent."""
        peer = context.peer()
        metadata = dict(context.invocation_metadata() or ())
        declared = parse_declared(metadata.get(PACKET_BYTES_KEY))
        keyring = self.keyring() if self.keyring is not None else None
        caller = self._caller(context, keyring is not None)
        arrivals = Arrivals()
        early: EarlyReply | None = None
        release: Callable[[], None] | None = None
        async with self.gate.stream(peer) as ticket:
            def on_head(head: Buffer) -> mmap.mmap | None:
                nonlocal early, release
                room = self._on_head(head, caller) if self._on_head is not None else None
                # Early only on a connection that completed an exchange, with no keyring (whose
                # tag is checked on the whole packet), and when a reply slot is free now.
                if self.answers_early(caller) and ticket.trusted and keyring is None and self.raw_frames \
                        and self.gate.replying < self.gate.limits.max_replies:
                    opening = self._answering.open_early(head, caller)
                    if opening is not None:
                        release = self.gate.reply_slot()
                        context.add_done_callback(lambda _context, r=release: r())
                        early = EarlyReply(self.gate.computing(opening), context.write, arrivals,
                                           self.gate.limits.reply_deadline)
                return room
            answer: Answer | None = None
            try:
                packet = await read_packet(arrivals.counting(self.gate.paced(ticket, request_iterator)),
                                           self._max_packet_bytes, declared, on_head)
                arrivals.end()  # the request is whole: an early reply may catch up with its size
                if keyring is not None:  # refused unread: a stranger's bytes are never decoded
                    keyring.verify(EXCHANGE_REQUEST, packet, metadata.get(TAG_METADATA_KEY))
                answer = await early.answer() if early is not None else None
                if release is None:
                    release = self.gate.reply_slot()
                    context.add_done_callback(lambda _context, r=release: r())
                async with self.gate.processing(ticket):
                    if answer is None:
                        answer = await self._answering.open_whole(packet, caller)
                    await answer.finish(packet)
                rest = None
                if early is not None and early.opened is not None:
                    rest = await early.stop()
                    self.answered_early += 1
                    self.early_reply_bytes += early.written
                    if self._on_answered_early is not None:
                        self._on_answered_early(early.written)
            except BaseException:
                if early is not None and early.opened is not None:
                    self.gate.accounts.distrust(peer)  # an early answer for nothing: no more of them
                if early is not None:
                    await early.cancel()
                if answer is not None:
                    await answer.abandon()  # (settles it instead if it was taken)
                raise
        return answer, rest

    async def Exchange(self, request_iterator: AsyncIterator[gossip_pb2.Frame],
                       context: grpc.aio.ServicerContext) -> None:
        refusal: errors.Refusal | None = None
        answer: Answer | None = None
        try:
            answer, rest = await self._answer(request_iterator, context)
            # The reply is written under a deadline and a bound too: a caller that never
            # grants flow-control window would otherwise hold it (a whole model) for good.
            if rest is None:
                reply = answer.reply
                keyring = self.keyring() if self.keyring is not None else None
                if keyring is not None:
                    await context.send_initial_metadata(((TAG_METADATA_KEY, keyring.sign(EXCHANGE_REPLY, reply)),))
                frames: Iterable[Any] = to_raw_frames(reply) if self.raw_frames else to_frames(reply)
                size = packet_size(reply)
            else:
                frames, size = rest, packet_size([f.data for f in rest])
            await self.gate.write_reply(frames, context.write, size)
        except errors.Refusal as e:
            refusal = _detached(e)
        finally:
            if answer is not None:
                # Taken: merged whatever became of the reply, after it (the caller does not wait
                # for our merge). Shielded: a caller that drops the call once it has the reply
                # cancels this handler, and the merge and the link's release must still happen.
                settling = asyncio.ensure_future(self.gate.computing(answer.settle()))
                self._settling.add(settling)
                settling.add_done_callback(self._settling.discard)
                await asyncio.shield(settling)
        # Aborting outside the except clause: an abort raised inside it would chain the refusal
        # (and through its traceback, the reading path's frames and the packet buffer) onto
        # the AbortError, which gRPC keeps in a reference cycle: every refused packet would
        # then stay allocated until the cycle collector ran (measured: RSS +1.8 GiB in 10 s
        # under a flood of refused 512 KiB frames).
        if refusal is not None:
            if isinstance(refusal, admission.ReplyUnread):
                # No status can follow a write still queued behind the caller's flow control
                # (gRPC refuses the batch: too many operations, logged as an error each time);
                # the handler ends as cancelled instead. The reply stays queued in gRPC, and
                # holds its reply slot, until the caller reads it or the connection ends.
                self._on_rejected(refusal)
                raise asyncio.CancelledError(refusal.message)
            if refusal.reason == "busy":
                await context.abort(grpc.StatusCode.ABORTED, refusal.message)
            self._on_rejected(refusal)
            await context.abort(status_for(refusal), f"packet refused ({refusal.reason}): {refusal.message}")


def _detached(error: errors.Refusal) -> errors.Refusal:
    """``error`` without its traceback and chained exceptions, which hold the frames (and so
    the buffers) of the code that raised it."""
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error


def add_to_server(servicer: GossipServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_GossipServicer_to_server``, but with
    the copy-free frame (de)serialisers of ``peer.transport.frames``."""
    servicer.raw_frames = True
    handlers = {"Exchange": grpc.stream_stream_rpc_method_handler(
        servicer.Exchange, request_deserializer=parse_frame, response_serializer=serialize_frame)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hearsay.v1.Gossip", handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register("hearsay.v1.Gossip", handlers)


# A message's protobuf envelope around its bytes field: tag, length varint, ``end`` flag.
_ENVELOPE_BYTES = 16


# gRPC sets SO_REUSEPORT by default, which lets a second peer bind a port already taken and
# silently share its calls. Off, on every server of a peer: a taken port is an error at start.
NO_REUSEPORT = ("grpc.so_reuseport", 0)


def server_options(membership_limits: MembershipLimits = MembershipLimits()) -> list[tuple[str, int]]:
    """Options for the ``grpc.aio.server`` that serves ``Exchange`` and ``Membership``.

    The message limit is set explicitly, not left to gRPC's default: it is the largest
    message either service accepts (a 1 MiB frame, a membership message), so gRPC refuses
    anything larger with RESOURCE_EXHAUSTED from its length prefix, before the message
    is buffered or parsed; our own checks (``read_packet``, ``membership.wire.from_wire``)
    then bound what is below it.
    """
    largest = max(FRAME_BYTES, membership_limits.max_message_bytes) + _ENVELOPE_BYTES
    return [*STREAM_OPTIONS, ("grpc.max_receive_message_length", largest), *connection_options(), NO_REUSEPORT]


# A caller must open HTTP/2 within this many seconds of connecting (an honest gRPC client
# sends its preface at once); gRPC's default kept a silent connection about a minute.
HANDSHAKE_TIMEOUT_MS = 5_000
# A connection with no call for this long is closed (honest peers re-dial on their next exchange).
CONNECTION_IDLE_MS = 300_000


def connection_options(descriptors: int | None = None) -> list[tuple[str, int]]:
    """Bounds on connections, so idle sockets cannot take every descriptor: silent ones are
    closed after ``HANDSHAKE_TIMEOUT_MS``, idle ones after ``CONNECTION_IDLE_MS``, and at most
    half the soft descriptor limit (less a reserve for files, the admin port and our own
    outbound channels) are accepted at once; beyond that gRPC closes a new one at once."""
    if descriptors is None:
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        descriptors = descriptors if descriptors != resource.RLIM_INFINITY else 1 << 20
    return [("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
            ("grpc.max_connection_idle_ms", CONNECTION_IDLE_MS),
            ("grpc.max_allowed_incoming_connections", max(32, (descriptors - 256) // 2))]




class GossipClient:
    """Opens one channel per partner address and runs push-pull exchanges over it."""

    def __init__(self, max_packet_bytes: int, credentials: grpc.ChannelCredentials | None = None,
                 keyring: KeyringSource | None = None) -> None:
        self._max_packet_bytes = max_packet_bytes
        self.keyring = keyring  # sign our packets, verify replies (protocol/keyring.py)
        self._pool = ChannelPool(credentials)  # None: plaintext; channels.channel_credentials: mutual TLS
        # on_reply_head(address, first frame's bytes): the reply's head, before the rest is read
        # (peer.runtime.keyframe_room.make_room_for_reply); must not keep the bytes.
        self.on_reply_head: Callable[[str, Buffer], mmap.mmap | None] | None = None

    def _exchange_method(self, address: str) -> grpc.aio.StreamStreamMultiCallable:
        channel = self._pool.get(address)
        # The generated stub's method, with the copy-free frame (de)serialisers.
        return channel.stream_stream(EXCHANGE_METHOD, request_serializer=serialize_frame,
                                     response_deserializer=parse_frame)

    async def exchange(self, address: str, packet: Buffer | Sequence[Buffer],
                       timeout: float | Budget) -> memoryview:
        """Send ``packet`` (bytes-like, or a sequence of buffers sent one after the other)
        to ``address`` and return the packet it answers with, as one buffer.

        ``timeout`` is a ``protocol.deadlines.Budget`` (or seconds for all its limits):
        gRPC enforces its total; a watchdog gives the exchange up as ``PartnerGone`` when
        no frame is written or read for ``idle`` seconds, or the partner's first reply
        frame comes ``answer`` seconds after our last frame (a dead partner, not a slow one)."""
        budget = Budget.of(timeout)
        # The size is declared up front so that the callee can refuse an oversize packet
        # before reading it, and pace our stream against it (peer/transport/admission.py).
        keyring = self.keyring() if self.keyring is not None else None
        metadata: tuple[tuple[str, str], ...] = ((PACKET_BYTES_KEY, str(packet_size(packet))),)
        if keyring is not None:
            metadata += ((TAG_METADATA_KEY, keyring.sign(EXCHANGE_REQUEST, packet)),)
        loop = asyncio.get_running_loop()
        waiting = [budget.idle]  # the limit of the current wait, for the message
        active = [True]  # gRPC's request task may ask for the next frame after we are done
        async with asyncio.timeout(loop.time() + budget.idle) as guard:
            def progress(allowance: float) -> None:
                if active[0]:
                    waiting[0] = allowance
                    guard.reschedule(loop.time() + allowance)

            frames = _watched_request(to_raw_frames(packet), lambda: progress(budget.idle),
                                      lambda: progress(budget.answer))
            call = self._exchange_method(address)(frames, timeout=budget.total, metadata=metadata)
            try:
                hook = self.on_reply_head
                reply = await read_packet(_watched_reply(call, lambda: progress(budget.idle)),
                                          self._max_packet_bytes,
                                          on_head=None if hook is None else lambda head: hook(address, head))
                if keyring is not None:  # a reply that does not verify is refused before it is decoded
                    keyring.verify(EXCHANGE_REPLY, reply,
                                   dict(await call.initial_metadata() or ()).get(TAG_METADATA_KEY))
                return reply
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    await self.forget(address)  # a fresh channel next time, not one stuck in backoff
                raise exchange_error(e.code(), e.details() or "") from None
            except errors.Refusal:
                call.cancel()
                raise
            except asyncio.CancelledError:
                call.cancel()
                if guard.expired():
                    await self.forget(address)
                    raise PartnerGone(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"no progress for {waiting[0]:.2f} s") from None
                raise
            finally:
                active[0] = False
        raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises

    async def forget(self, address: str) -> None:
        await self._pool.forget(address)

    async def close(self) -> None:
        await self._pool.close()


def _watched_request(frames: Iterator[RawFrame], sent: Callable[[], None],
                     done: Callable[[], None]) -> Iterator[RawFrame]:
    """``frames``, calling ``sent`` each time gRPC asks for the next one (it has written
    the one before) and ``done`` once the last is written (the partner's turn)."""
    for frame in frames:
        sent()
        yield frame
    done()


async def _watched_reply(call: AsyncIterator[RawFrame], received: Callable[[], None]) -> AsyncIterator[RawFrame]:
    """The reply's frames, calling ``received`` as each arrives."""
    async for frame in call:
        received()
        yield frame
