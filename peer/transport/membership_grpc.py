"""gRPC transport for SWIM: the ``Membership`` servicer and a fire-and-forget client.

SWIM assumes an unreliable datagram network: a message either arrives or it does not,
and the protocol's own timeouts turn "did not" into suspicion. This module keeps that
contract over gRPC: every failure on the client side (unreachable peer, deadline,
refusal, a reply that does not decode) is logged at debug level and reported as
"nothing came back", never raised; on the server side, bytes that do not decode or a
message of the wrong kind for the method end the call with INVALID_ARGUMENT, and no
exception escapes the handler.

The transport knows nothing of the state machine: the servicer hands decoded
messages to a ``Receiver`` (peer/runtime/membership.py) and returns whatever reply
it gives for a push-pull.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from hearsay.v1 import membership_pb2, membership_pb2_grpc
from peer.transport.channels import ChannelPool
from protocol import errors
from protocol.keyring import MEMBERSHIP_REPLY, MEMBERSHIP_REQUEST, TAG_METADATA_KEY, Keyring
from protocol.membership import Ack, Gossip, Message, Nack, Ping, PingReq, PushPull
from protocol.membership.wire import MembershipLimits, from_wire_in_parts, from_wire_in_steps, to_wire

log = logging.getLogger(__name__)

# receive(message) -> the reply to send back on this call (only ever a PushPull reply), or
# None; receive(part, more=True): the next part of the large full state just received.
Receiver = Callable[..., "Message | None"]

async def decode(data: bytes, limits: MembershipLimits) -> Message:
    """``from_wire``, letting the loop run between steps of a large full state (a forged
    one of 66,000 rows would otherwise hold it for up to a second)."""
    steps = from_wire_in_steps(data, limits)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(0)


# Which message kinds each RPC carries; anything else on that method is refused.
PING_KINDS: tuple[type, ...] = (Ping, Ack, Nack, Gossip)
PING_REQ_KINDS: tuple[type, ...] = (PingReq,)
PUSH_PULL_KINDS: tuple[type, ...] = (PushPull,)
# The cluster keyring now in force (peer/transport/keyring_file.py), or None: no HMAC.
KeyringSource = Callable[[], Keyring] | None


class MembershipServicer(membership_pb2_grpc.MembershipServicer):
    """Decodes, checks the kind against the method, and hands the message on."""

    def __init__(self, receive: Receiver, limits: MembershipLimits = MembershipLimits(),
                 on_rejected: Callable[[str], None] | None = None, keyring: KeyringSource = None) -> None:
        self._receive = receive
        self._limits = limits
        self._on_rejected = on_rejected
        self.keyring = keyring
        self.rejected = 0

    async def _handle(self, request: membership_pb2.Packet, context: grpc.aio.ServicerContext,
                      kinds: tuple[type, ...], method: str) -> Message | None:
        """The decoded message's reply; aborts the call (INVALID_ARGUMENT) on bad input.

        A large full state is handed over part by part as it is decoded (each part's rows
        validated first), with the loop free between parts; a fault found in a later part
        refuses the call, the rows before it stay merged (as if sent on their own).
        """
        if self.keyring is not None:  # checked before decoding: a stranger's bytes are never parsed
            tag = dict(context.invocation_metadata() or ()).get(TAG_METADATA_KEY)
            try:
                self.keyring().verify(MEMBERSHIP_REQUEST, request.data, tag)
            except errors.Refusal as e:
                await self._refuse(context, f"{method}: {e.reason}: {e.message}")
                return None  # not reached: abort raises
        reply: Message | None = None
        first = True
        parts = from_wire_in_parts(request.data, self._limits)
        while True:
            try:
                message = next(parts)
            except StopIteration:
                return reply
            except errors.Refusal as e:
                await self._refuse(context, f"{method}: {e.reason}: {e.message}")
                return None  # not reached: abort raises
            except Exception as e:  # noqa: BLE001 - a decoder gap is still the sender's bad bytes
                await self._refuse(context, f"{method}: undecodable ({type(e).__name__})")
                return None
            if first and not isinstance(message, kinds):
                await self._refuse(context, f"{method} does not carry {type(message).__name__}")
                return None
            try:
                if first:
                    reply = self._receive(message)
                else:
                    self._receive(message, more=True)
            except Exception:  # noqa: BLE001 - a bug in handling must not kill the server, but must be seen
                log.exception("membership: handling %s from %s failed", type(message).__name__, context.peer())
                await context.abort(grpc.StatusCode.INTERNAL, "membership handler failed")
            first = False
            await asyncio.sleep(0)  # the next part is decoded after whatever else is ready

    async def _refuse(self, context: grpc.aio.ServicerContext, why: str) -> None:
        self.rejected += 1
        if self._on_rejected is not None:
            self._on_rejected(why)
        log.warning("membership: refused a message from %s (%s)", context.peer(), why)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)

    async def Ping(self, request: membership_pb2.Packet,
                   context: grpc.aio.ServicerContext) -> membership_pb2.Empty:
        await self._handle(request, context, PING_KINDS, "Ping")
        return membership_pb2.Empty()

    async def PingReq(self, request: membership_pb2.Packet,
                      context: grpc.aio.ServicerContext) -> membership_pb2.Empty:
        await self._handle(request, context, PING_REQ_KINDS, "PingReq")
        return membership_pb2.Empty()

    async def PushPull(self, request: membership_pb2.Packet,
                       context: grpc.aio.ServicerContext) -> membership_pb2.Packet:
        reply = await self._handle(request, context, PUSH_PULL_KINDS, "PushPull")
        data = to_wire(reply) if reply is not None else b""
        if self.keyring is not None:
            await context.send_initial_metadata(((TAG_METADATA_KEY, self.keyring().sign(MEMBERSHIP_REPLY, data)),))
        return membership_pb2.Packet(data=data)


class MembershipClient:
    """One channel per address; sends one message per call and never raises.

    ``timeout`` bounds one-way messages (the probe timeout: an ack later than that is
    useless to the prober anyway); ``push_pull_timeout`` bounds full-state syncs, which
    are off the detector's critical path and carry more bytes.
    """

    def __init__(self, timeout: float, push_pull_timeout: float,
                 limits: MembershipLimits = MembershipLimits(),
                 credentials: grpc.ChannelCredentials | None = None, keyring: KeyringSource = None) -> None:
        self.keyring = keyring
        self.timeout = timeout
        self.push_pull_timeout = push_pull_timeout
        self._limits = limits
        self._pool = ChannelPool(credentials)  # None: plaintext; channels.channel_credentials: mutual TLS
        self.sent = 0
        self.failed = 0

    def _stub(self, address: str) -> membership_pb2_grpc.MembershipStub:
        return membership_pb2_grpc.MembershipStub(self._pool.get(address))

    async def send(self, to: str, message: Message) -> Message | None:
        """Deliver ``message`` to ``to``; the decoded push-pull reply, or None (also on any failure)."""
        self.sent += 1
        try:
            packet = membership_pb2.Packet(data=to_wire(message))
            keyring = self.keyring() if self.keyring is not None else None
            metadata = ((TAG_METADATA_KEY, keyring.sign(MEMBERSHIP_REQUEST, packet.data)),) if keyring else None
            stub = self._stub(to)
            if isinstance(message, PushPull):
                call = stub.PushPull(packet, timeout=self.push_pull_timeout, metadata=metadata)
                reply = await call
                if keyring is not None:
                    tag = dict(await call.initial_metadata() or ()).get(TAG_METADATA_KEY)
                    keyring.verify(MEMBERSHIP_REPLY, reply.data, tag)
                return await decode(reply.data, self._limits) if reply.data else None
            if isinstance(message, PingReq):
                await stub.PingReq(packet, timeout=self.timeout, metadata=metadata)
            else:
                await stub.Ping(packet, timeout=self.timeout, metadata=metadata)
            return None
        except grpc.aio.AioRpcError as e:
            self.failed += 1
            log.debug("membership: %s to %s lost: %s", type(message).__name__, to, e.code().name)
            if e.code() == grpc.StatusCode.UNAVAILABLE or (
                    e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and isinstance(message, PushPull)):
                # A fresh channel next time, not one waiting out a backoff. A push-pull has a
                # long timeout: missing it means the connection may be stale (TCP backing off
                # after a partition), and reconnects to dead members must not reuse it.
                await self.forget(to)
            return None
        except errors.Refusal as e:
            self.failed += 1
            log.warning("membership: push-pull reply from %s refused (%s): %s", to, e.reason, e.message)
            return None
        except Exception as e:  # noqa: BLE001 - e.g. a malformed address: a lost message, not a crash
            self.failed += 1
            log.debug("membership: %s to %s failed: %r", type(message).__name__, to, e)
            return None

    async def forget(self, address: str) -> None:
        await self._pool.forget(address)

    async def close(self) -> None:
        await self._pool.close()
